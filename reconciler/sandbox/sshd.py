"""One sshd per sandbox host, and the client side files that reach them.

Key-only root login with the sandbox identity; ``SetEnv DOCKER_HOST`` points
every remote ``docker`` command (including ``docker system dial-stdio``, the
Engine API transport over SSH) at that host's own engine.  Host keys and the
identity survive ``down`` so ``known_hosts`` stays valid across runs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from reconciler.errors import SandboxError
from reconciler.sandbox import procs
from reconciler.sandbox.layout import SSH_PORT, HostLayout, Layout

START_TIMEOUT = 10.0


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
        "PermitRootLogin prohibit-password",
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


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def healthy(host: HostLayout) -> bool:
    pid = procs.live_pid(host.sshd_pidfile)
    return pid is not None and str(host.sshd_config) in procs.cmdline(pid) and _port_open(host.address, SSH_PORT)


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
    if not (unchanged and healthy(host)):
        stop(host)
        host.sshd_config.write_text(text)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        procs.run(["nsenter", f"--net={host.netns_path}", "/usr/sbin/sshd", "-f", str(host.sshd_config),
                   "-E", str(host.sshd_log)], what=f"sshd for {host.name} (see {host.sshd_log})")
        if not procs.wait_until(lambda: healthy(host), timeout=START_TIMEOUT):
            raise SandboxError(f"sshd for {host.name} did not answer on {host.address}:{SSH_PORT} "
                               f"within {START_TIMEOUT:.0f}s; see {host.sshd_log}:\n" + procs.tail(host.sshd_log))
    return known_hosts_line(host.address, SSH_PORT, public)


def write_client_files(layout: Layout) -> str:
    """The sandbox identity, and authorized_keys holding only its public key."""
    public = ensure_keypair(layout.identity_file, "reconciler-sandbox-client")
    layout.authorized_keys.write_text(public + "\n")
    os.chmod(layout.authorized_keys, 0o600)
    return public


def write_known_hosts(layout: Layout, lines: list[str]) -> None:
    tmp = layout.known_hosts_file.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, layout.known_hosts_file)
