"""A private HAProxy per sandbox host, for one fleet test module (or bench).

The sandbox's own HAProxy (port 80) is shared by every helper's fleet tests,
and a deploy rewrites its whole config for its environment's site; a test
module that shifts weights and reloads for minutes would step on the others.
So this starts a second HAProxy in each host's network namespace, exactly as
the sandbox starts its own (``reconciler.sandbox.haproxy``: Debian's package,
master-worker, ``nsenter --net=``, run as the deploy user, who owns its files:
the product writes them over SSH as that user; the Lua, maps and pages its
config names written beside it), on its own frontend port and Runtime API
port, with its files in a fresh directory under /tmp (removed after).  The
product reaches it like any host's router: over the host's SSH connection,
its config written and reloaded through SSH.  Only the processes started
here are stopped, by their pid.

    with PrivateRouters(fleet, 18480, 19480) as routers:
        ... routers.block()                 # the environment's router: block
        ... routers.routers["h1"].settings()
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.core import router as rt
from reconciler.core import router_config
from reconciler.core import traffic
from reconciler.sandbox import haproxy, procs
from reconciler.sandbox.layout import DEPLOY_USER

START_TIMEOUT = 60.0  # seconds: two busy cores


@dataclass
class PrivateRouter:
    """One host's: its files under ``root``."""

    host: str
    address: str
    netns: str
    root: Path
    port: int
    admin_port: int
    pid: int | None = None

    @property
    def config(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def pidfile(self) -> Path:
        return self.root / "haproxy.pid"

    def settings(self) -> rt.RouterSettings:
        return rt.RouterSettings(bind=f"{self.address}:{self.port}", admin=f"127.0.0.1:{self.admin_port}",
                                 socket=str(self.root / "admin.sock"), state_file=str(self.root / "server-state"),
                                 log="stdout", files=traffic.files_dir(str(self.config)))

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        site = rt.Site(self.settings())
        haproxy.write_support_files(site)
        self.config.write_text(router_config.render_config(site, {}))
        user = pwd.getpwnam(DEPLOY_USER)
        for path in (self.root, *self.root.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        argv = ["nsenter", f"--net=/var/run/netns/{self.netns}", *haproxy.run_as(), haproxy.binary(), "-W", "-db",
                "-f", str(self.config), "-p", str(self.pidfile)]
        log = self.root / "haproxy.log"
        self.pid = procs.spawn_detached(argv, log)
        if not procs.wait_until(lambda: haproxy.answers_on(self.root / "admin.sock") or not procs.alive(self.pid),
                                timeout=START_TIMEOUT, interval=0.2) or not haproxy.answers_on(self.root / "admin.sock"):
            raise AssertionError(f"private haproxy on {self.host} did not answer: {procs.tail(log)}")

    def stop(self) -> None:
        """The master started here (its workers exit with it), by its pid."""
        if self.pid is not None:
            procs.stop_pids({self.pid, procs.read_pidfile(self.pidfile) or self.pid}, grace=15)
        self.pid = None


class PrivateRouters:
    """Every sandbox host's, on ``port`` (its address) and ``admin_port`` (its loopback)."""

    def __init__(self, fleet, port: int, admin_port: int) -> None:
        # Under a directory the deploy user can reach (pytest's own tmp is root's, mode 0700).
        self.root = Path(tempfile.mkdtemp(prefix=f"reconciler-ownrouter-{port}-", dir="/tmp"))
        self.root.chmod(0o755)
        self.port, self.admin_port = port, admin_port
        self.routers = {h.name: PrivateRouter(h.name, h.address, h.netns, self.root / h.name, port, admin_port)
                        for h in fleet.hosts}

    @property
    def pids(self) -> dict[str, int | None]:
        """Per host, the master's pid (``SIGUSR2`` reloads it, as the router's reload command does)."""
        return {name: r.pid for name, r in self.routers.items()}

    def start(self) -> "PrivateRouters":
        try:
            for r in self.routers.values():
                r.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for r in self.routers.values():
            r.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PrivateRouters":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def block(self) -> str:
        """The environment's ``router:`` block for these routers (``{host}`` filled in per host)."""
        d = f"{self.root}/{{host}}"
        return (f'router:\n  bind: "{{address}}:{self.port}"\n  admin: 127.0.0.1:{self.admin_port}\n'
                f'  config_file: {d}/haproxy.cfg\n  reload: "kill -USR2 $(cat {d}/haproxy.pid)"\n'
                f'  socket: {d}/admin.sock\n  state_file: {d}/server-state\n  log: stdout\n')
