"""One HAProxy per sandbox host, inside the host's network namespace.

Debian's ``haproxy`` package, started by hand like the host's dockerd: with
``nsenter --net=`` so it binds the host's address (the HTTP frontend) and
the host's own loopback (the Runtime API, which the product reaches over
the host's SSH connection, never from outside).  Master-worker mode in the
foreground (``-W -db``): the pidfile names the master, ``SIGUSR2`` to it
reloads the config with the listeners handed over, which is the reload
command the description gives the product.

The config file belongs to the product once it exists: ``ensure`` writes
the empty routing only when there is no config, or one HAProxy rejects, and
otherwise starts HAProxy on what is there, which is how a restart restores
the live routing.
"""

from __future__ import annotations

import shutil
import socket

from reconciler.core import router
from reconciler.errors import SandboxError
from reconciler.sandbox import procs
from reconciler.sandbox.description import SandboxRouter
from reconciler.sandbox.layout import ROUTER_ADMIN, ROUTER_PORT, HostLayout

START_TIMEOUT = 15.0


def binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def description(host: HostLayout) -> SandboxRouter:
    return SandboxRouter(
        address=host.address, port=ROUTER_PORT, admin=ROUTER_ADMIN,
        config_file=str(host.haproxy_config), state_file=str(host.haproxy_state),
        socket=str(host.haproxy_socket), pidfile=str(host.haproxy_pidfile), log="stdout",
        reload_command=f"kill -USR2 $(cat {host.haproxy_pidfile})")


def argv(host: HostLayout) -> list[str]:
    return ["nsenter", f"--net={host.netns_path}", binary(), "-W", "-db",
            "-f", str(host.haproxy_config), "-p", str(host.haproxy_pidfile)]


def answers(host: HostLayout) -> bool:
    """The Runtime API answers on the unix socket (reachable from the root namespace)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(host.haproxy_socket))
            s.sendall(b"show info\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return b"Name: HAProxy" in data
    except OSError:
        return False


def healthy(host: HostLayout) -> bool:
    pid = procs.live_pid(host.haproxy_pidfile)
    return pid is not None and str(host.haproxy_config) in procs.cmdline(pid) and answers(host)


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


def ensure(host: HostLayout) -> SandboxRouter:
    """Make the host's HAProxy run (reusing a healthy one); return how to reach it."""
    described = description(host)
    if healthy(host):
        return described
    stop(host)
    host.haproxy_dir.mkdir(parents=True, exist_ok=True)
    if not host.haproxy_config.exists() or not _valid(host):
        host.haproxy_config.write_text(router.render_config(router.Site(described.settings()), {}))
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
