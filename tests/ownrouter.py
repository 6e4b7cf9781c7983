"""A private HAProxy per sandbox host, for one fleet test module.

The sandbox's own HAProxy (port 80) is shared by every helper's fleet tests,
and a deploy rewrites its whole config for its environment's site; a test
module that shifts weights and reloads for minutes would step on the others.
So this starts a second HAProxy in each host's network namespace, exactly as
the sandbox starts its own (Debian's package, master-worker, ``nsenter
--net=``, run as the host's deploy user, who owns its files: the product
writes them over SSH as that user), on its own frontend port and Runtime
API port, with its files in a fresh directory under /tmp (removed after).  The product reaches it like any host's router:
over the host's SSH connection, its config written and reloaded through SSH.
Only the processes started here are stopped, by their pid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler.core import router as rt
from reconciler.core import router_config
from reconciler.sandbox import haproxy, procs


@dataclass(frozen=True)
class OwnRouters:
    root: Path  # <root>/<host>/haproxy.cfg ...
    port: int  # every host's frontend, on its address
    admin_port: int  # every host's Runtime API, on its loopback
    pids: dict[str, int]

    def block(self) -> str:
        """The environment's ``router:`` block for these routers."""
        d = f"{self.root}/{{host}}"
        return (f'router:\n  bind: "{{address}}:{self.port}"\n  admin: 127.0.0.1:{self.admin_port}\n'
                f'  config_file: {d}/haproxy.cfg\n  reload: "kill -USR2 $(cat {d}/haproxy.pid)"\n'
                f'  socket: {d}/admin.sock\n  state_file: {d}/server-state\n  log: stdout\n')


def _answers(sock: Path) -> bool:
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


def start(fleet, port: int, admin_port: int) -> OwnRouters:
    root = Path(tempfile.mkdtemp(prefix=f"reconciler-ownrouter-{port}-", dir="/tmp"))
    root.chmod(0o755)  # the deploy user reaches its host's directory through it
    pids: dict[str, int] = {}
    try:
        for h in fleet.hosts:
            d = root / h.name
            d.mkdir(parents=True, exist_ok=True)
            user = pwd.getpwnam(h.user)
            settings = rt.RouterSettings(bind=f"{h.address}:{port}", admin=f"127.0.0.1:{admin_port}",
                                         socket=str(d / "admin.sock"), state_file=str(d / "server-state"), log="stdout")
            (d / "haproxy.cfg").write_text(router_config.render_config(rt.Site(settings), {}))
            for path in (d, d / "haproxy.cfg"):
                os.chown(path, user.pw_uid, user.pw_gid)
            as_user = [] if user.pw_uid == 0 else ["setpriv", f"--reuid={h.user}", f"--regid={h.user}", "--init-groups"]
            argv = ["nsenter", f"--net=/var/run/netns/{h.netns}", *as_user, haproxy.binary(), "-W", "-db",
                    "-f", str(d / "haproxy.cfg"), "-p", str(d / "haproxy.pid")]
            pids[h.name] = procs.spawn_detached(argv, d / "haproxy.log")
            if not procs.wait_until(lambda: _answers(d / "admin.sock"), timeout=60, interval=0.2):
                raise AssertionError(f"private haproxy on {h.name} did not answer: {procs.tail(d / 'haproxy.log')}")
    except BaseException:
        stop(OwnRouters(root, port, admin_port, pids))
        raise
    return OwnRouters(root, port, admin_port, pids)


def stop(routers: OwnRouters) -> None:
    """Stop the masters this module started (their workers exit with them)."""
    for name, pid in routers.pids.items():
        master = procs.read_pidfile(routers.root / name / "haproxy.pid") or pid
        for p in {pid, master}:
            if procs.alive(p):
                subprocess.run(["kill", "-TERM", str(p)], check=False)
        deadline = time.monotonic() + 15
        while any(procs.alive(p) for p in {pid, master}) and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(routers.root, ignore_errors=True)
