"""One HAProxy per sandbox host, inside the host's network namespace.

Debian's ``haproxy`` package, started by hand like the host's dockerd: with
``nsenter --net=`` so it binds the host's address (the HTTP frontend) and
the host's own loopback (the Runtime API, which the product reaches over
the host's SSH connection, never from outside).  Master-worker mode in the
foreground (``-W -db``): the pidfile names the master, ``SIGUSR2`` to it
reloads the config with the listeners handed over, which is the reload
command the description gives the product.

It runs as the deploy user (``setpriv --reuid``), not root, so that the
product, which reaches hosts as that user, can write its config and state
file (the directory and files are the deploy user's) and signal its master
to reload.  Binding port 80 takes ``net.ipv4.ip_unprivileged_port_start``
lowered to the router's port inside the host's network namespace (the
sysctl is per namespace: the machine's own is left alone).  Nothing
reaches hosts as root any more (sshd refuses it), so the router needs no
capability: ``READ_ROOT_FILES`` stays off (it gave ``CAP_DAC_READ_SEARCH``
while older sessions still wrote files as root).

The config file belongs to the product once it exists: ``ensure`` writes
the empty routing only when there is no config, or one HAProxy rejects, and
otherwise starts HAProxy on what is there, which is how a restart restores
the live routing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket

from reconciler.core import router, router_config
from reconciler.errors import SandboxError
from reconciler.sandbox import procs
from reconciler.sandbox.description import SandboxRouter
from reconciler.sandbox.layout import DEPLOY_USER, ROUTER_ADMIN, ROUTER_PORT, HostLayout

START_TIMEOUT = 15.0
# Off: the router reads only its own user's files (it was on while sessions
# of older code still wrote them as root).
READ_ROOT_FILES = False


def binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def description(host: HostLayout) -> SandboxRouter:
    return SandboxRouter(
        address=host.address, port=ROUTER_PORT, admin=ROUTER_ADMIN,
        config_file=str(host.haproxy_config), state_file=str(host.haproxy_state),
        socket=str(host.haproxy_socket), pidfile=str(host.haproxy_pidfile), log="stdout",
        reload_command=f"kill -USR2 $(cat {host.haproxy_pidfile})")


def run_as() -> list[str]:
    """``setpriv`` to the deploy user: its uid, its group, its supplementary groups."""
    caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"] if READ_ROOT_FILES else []
    return ["setpriv", f"--reuid={DEPLOY_USER}", f"--regid={DEPLOY_USER}", "--init-groups", *caps]


def argv(host: HostLayout) -> list[str]:
    return ["nsenter", f"--net={host.netns_path}", *run_as(), binary(), "-W", "-db",
            "-f", str(host.haproxy_config), "-p", str(host.haproxy_pidfile)]


def _owner_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _deploy_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(DEPLOY_USER)
    return entry.pw_uid, entry.pw_gid


def _hand_to_deploy_user(host: HostLayout) -> None:
    """The router's directory and files belong to the deploy user; port 80 is bindable by it in the host's netns."""
    uid, gid = _deploy_ids()
    host.haproxy_dir.mkdir(parents=True, exist_ok=True)
    for path in (host.haproxy_dir, *host.haproxy_dir.rglob("*")):  # the traffic files' directory too
        if not path.is_socket():
            os.chown(path, uid, gid)
    procs.run(["nsenter", f"--net={host.netns_path}", "sysctl", "-q", "-w",
               f"net.ipv4.ip_unprivileged_port_start={min(ROUTER_PORT, 1024)}"],
              what=f"let {DEPLOY_USER} bind port {ROUTER_PORT} on {host.name}")


def answers(host: HostLayout) -> bool:
    """The Runtime API answers on the unix socket (reachable from the root namespace)."""
    return answers_on(host.haproxy_socket)


def answers_on(sock) -> bool:
    """An HAProxy's Runtime API answers ``show info`` on the unix socket ``sock``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(sock))
            s.sendall(b"show info\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return b"Name: HAProxy" in data
    except OSError:
        return False


def healthy(host: HostLayout) -> bool:
    """Ours, answering, and run by the deploy user (a root one, left by older code, is replaced)."""
    pid = procs.live_pid(host.haproxy_pidfile)
    return (pid is not None and str(host.haproxy_config) in procs.cmdline(pid)
            and _owner_uid(pid) == _deploy_ids()[0] and answers(host))


def stop(host: HostLayout) -> None:
    pid = procs.live_pid(host.haproxy_pidfile)
    pids = {pid} if pid else set()
    pids |= set(procs.find_ours(path_marks=[str(host.haproxy_config)]))
    procs.stop_pids(pids, grace=5)
    host.haproxy_pidfile.unlink(missing_ok=True)
    host.haproxy_socket.unlink(missing_ok=True)


def _valid(host: HostLayout) -> bool:
    return procs.run([binary(), "-c", "-q", "-f", str(host.haproxy_config)], what="haproxy -c",
                     check=False).returncode == 0


def write_support_files(site: router.Site) -> None:
    """The Lua, empty maps and pages the rendered config names (``core.traffic``), as the product writes them."""
    from pathlib import Path

    from reconciler import resources
    from reconciler.core import traffic

    lua = (resources.path("haproxy") / traffic.LUA_FILE).read_text()
    for path, text in traffic.support_files(site, {}, lua).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def ensure(host: HostLayout) -> SandboxRouter:
    """Make the host's HAProxy run (reusing a healthy one); return how to reach it."""
    described = description(host)
    if healthy(host):
        return described
    stop(host)
    host.haproxy_dir.mkdir(parents=True, exist_ok=True)
    if not host.haproxy_config.exists() or not _valid(host):
        site = router.Site(described.settings())
        write_support_files(site)
        host.haproxy_config.write_text(router_config.render_config(site, {}))
    _hand_to_deploy_user(host)
    pid = procs.spawn_detached(argv(host), host.haproxy_log)
    if not procs.wait_until(lambda: answers(host) or not procs.alive(pid), timeout=START_TIMEOUT, interval=0.2) \
            or not answers(host):
        raise SandboxError(f"haproxy for {host.name} did not answer on {host.haproxy_socket} within "
                           f"{START_TIMEOUT:.0f}s; see {host.haproxy_log}:\n" + procs.tail(host.haproxy_log))
    return described


def restart(host: HostLayout) -> None:
    """Stop and start it again on the config as it is (what a host reboot does)."""
    stop(host)
    ensure(host)
