"""One sshd per sandbox host, and the client side files that reach them.

Key-only login with the sandbox identity, for the deploy user (in the
docker group), whom the product and the tests reach hosts as, and no one
else: root cannot log in (``PermitRootLogin no``, ``AllowUsers``), so a
path that still needed root fails in the tests instead of passing as root.
``SetEnv DOCKER_HOST`` points every remote ``docker`` command (including ``docker system dial-stdio``, the
Engine API transport over SSH) at that host's own engine.  Host keys and the
identity survive ``down`` so ``known_hosts`` stays valid across runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.sandbox import procs
from reconciler.sandbox.layout import DEPLOY_USER, SSH_PORT, HostLayout, Layout

# sshd binds, writes its pidfile, and each connection's child re-executes
# sshd and loads the host key before it sends the banner: seconds, not
# milliseconds, while three engines, PostgreSQL and an image push start on
# two cores.  The old 10 s with 1 s looks failed there (issue 13).
START_TIMEOUT = 60.0
REUSE_PROBE = 10.0  # how long a running sshd may take to greet before ``up`` replaces it
STATUS_PROBE = 5.0


def ensure_keypair(path: Path, comment: str) -> str:
    """Create an ed25519 key at ``path`` unless a valid one is there; return the public line."""
    pub = path.with_name(path.name + ".pub")
    if not (path.exists() and pub.exists()):
        path.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        procs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                  what=f"ssh-keygen {path}")
    os.chmod(path, 0o600)
    return pub.read_text().strip()


def known_hosts_line(address: str, port: int, public_key_line: str) -> str:
    """``addr keytype key``; non-22 ports are written ``[addr]:port`` as OpenSSH does."""
    name = address if port == 22 else f"[{address}]:{port}"
    keytype, key = public_key_line.split()[:2]
    return f"{name} {keytype} {key}"


def sshd_config_text(host: HostLayout, authorized_keys: Path) -> str:
    return "\n".join([
        "# Written by `reconciler sandbox up`; rewritten on every run.",
        f"Port {SSH_PORT}",
        f"ListenAddress {host.address}",
        f"HostKey {host.sshd_host_key}",
        f"PidFile {host.sshd_pidfile}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        f"AllowUsers {DEPLOY_USER}",  # the product reaches hosts as the deploy user only
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        # The state dir may be overridden to somewhere like /tmp, whose
        # modes StrictModes rejects; the file only ever holds our key.
        "StrictModes no",
        # Deploys open many channels (one per Engine API connection).
        "MaxSessions 100",
        "MaxStartups 100:30:200",
        f"SetEnv DOCKER_HOST=unix://{host.docker_socket}",
        "Subsystem sftp internal-sftp",
        "",
    ])


def probe(host: HostLayout, limit: float) -> str | None:
    """None when our sshd (its pidfile, its config) greets on the host's
    address within ``limit`` seconds; else what is missing."""
    pid = procs.pid_in(host.sshd_pidfile)
    if pid is None:
        return f"no running sshd named in {host.sshd_pidfile}"
    if str(host.sshd_config) not in procs.cmdline(pid):
        return f"pid {pid} in {host.sshd_pidfile} is not an sshd -f {host.sshd_config}"
    return procs.tcp_banner(host.address, SSH_PORT, b"SSH-", limit)


def healthy(host: HostLayout, timeout: float = STATUS_PROBE) -> bool:
    return probe(host, timeout) is None


def _gone(host: HostLayout) -> str | None:
    if procs.find_ours(path_marks=[str(host.sshd_config)]):
        return None
    return f"no sshd -f {host.sshd_config} runs any more (it exited; see {host.sshd_log}:\n{procs.tail(host.sshd_log)})"


def stop(host: HostLayout) -> None:
    pid = procs.live_pid(host.sshd_pidfile)
    pids = [pid] if pid else []
    pids += procs.find_ours(path_marks=[str(host.sshd_config)])
    procs.stop_pids(set(pids), grace=3)
    host.sshd_pidfile.unlink(missing_ok=True)


def ensure(host: HostLayout, layout: Layout) -> str:
    """Make the host's sshd run with the current config; return its pinned known_hosts line."""
    host.root.mkdir(parents=True, exist_ok=True)
    public = ensure_keypair(host.sshd_host_key, f"reconciler-sandbox-{host.name}")
    text = sshd_config_text(host, layout.authorized_keys)
    unchanged = host.sshd_config.exists() and host.sshd_config.read_text() == text
    if not (unchanged and healthy(host, REUSE_PROBE)):
        procs.retry_once(f"sshd for {host.name}", lambda: _start(host, text))
    return known_hosts_line(host.address, SSH_PORT, public)


def _start(host: HostLayout, config: str, timeout: float = START_TIMEOUT) -> float:
    """Stop whatever runs for the host, start sshd on ``config``, wait for its banner."""
    stop(host)
    host.sshd_config.write_text(config)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    # sshd forks into the background: this returns once the config is read.
    procs.run(["nsenter", f"--net={host.netns_path}", "/usr/sbin/sshd", "-f", str(host.sshd_config),
               "-E", str(host.sshd_log)], what=f"sshd for {host.name} (see {host.sshd_log})")
    return procs.poll(f"sshd for {host.name}",
                      f"its pidfile {host.sshd_pidfile}, then an SSH banner on {host.address}:{SSH_PORT}",
                      lambda limit: probe(host, limit), timeout=timeout, gone=lambda: _gone(host))


def write_client_files(layout: Layout) -> str:
    """The sandbox identity, and authorized_keys holding only its public key."""
    public = ensure_keypair(layout.identity_file, "reconciler-sandbox-client")
    layout.authorized_keys.write_text(public + "\n")
    # sshd reads it as the user logging in; it holds a public key only.
    os.chmod(layout.authorized_keys, 0o644)
    return public


def write_known_hosts(layout: Layout, lines: list[str]) -> None:
    tmp = layout.known_hosts_file.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, layout.known_hosts_file)
