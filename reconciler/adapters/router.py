"""The router of one host: HAProxy's Runtime API, over the host's pinned SSH connection.

How the admin socket is reached, and why: HAProxy listens for its Runtime
API on ``127.0.0.1:PORT`` *inside the host* (``RouterSettings.admin``), and
every command travels as a ``direct-tcpip`` channel of the SSH connection
the run already holds for the host.  So no port is opened to the outside,
the pinned host key and the run's timeouts apply, and a command costs one
channel round trip with no process started on the host.  The alternatives
were worse: a ``direct-streamlocal`` channel to the unix socket has no API
in paramiko (it would mean hand-built SSH messages through its internals),
and an exec channel running ``socat`` per command starts a process each
time (the docs measure 135 ms and more per exec) and needs socat on every
host.  What it costs: any local process on the host can reach the loopback
port, as it could a unix socket it has the rights to; the rendered config
also keeps a unix admin socket for operators and for reloads.

Files on the host (the config, the server-state file) are written through
an exec channel fed on stdin, because a host may offer no SFTP.  After every
change the live servers are observed and written back: the config holds
every server with its weight and state, the server-state file their check
state, so a restart or reload of HAProxy restores the routing as it was.

No library here: the PyPI clients of the Runtime API open their own unix
or TCP sockets on the local machine; the protocol is a line out, an answer
back, which this module checks against the answers ``core.router`` expects.
"""

from __future__ import annotations

import csv
import io
import shlex
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import paramiko

from reconciler.adapters import ssh
from reconciler.adapters.ssh import _ack_at_once
from reconciler.core import router as core
from reconciler.core import router_steps
from reconciler.core import router_config
from reconciler.core import router_owner
from reconciler.core import traffic
from reconciler.core.health import CheckResult, Verdict
from reconciler.errors import HostUnreachable, RouterConfigRejected, RouterError

if TYPE_CHECKING:
    from fabric import Connection

    from reconciler.adapters.hosts import DockerHost

POLL_INTERVAL = 0.25  # waits read the router's state this often, at most
SETTLE = 10.0  # seconds an admin socket may refuse connections (a reload rebinding it)


@dataclass(frozen=True)
class RouterAccess:
    """How to control one host's router beyond its Runtime API."""

    host: str  # the host's name, used in every error
    config_file: str
    reload_command: str  # a shell line on the host, run after a checked config is in place
    check_command: str = "/usr/sbin/haproxy -c -q -f"  # followed by a candidate file's path
    timeout: float = 10.0
    # A router run from an image (adapters.router_container) is checked and
    # reloaded through the engine instead of the two shell lines above:
    # ``checker(path)`` gives the check's exit code and output, ``reloader()`` signals its master.
    checker: Callable[[str], tuple[int, str]] | None = None
    reloader: Callable[[], None] | None = None
    owner: str | None = None  # the environment whose config this is: stamped in its header (core.router_owner)


@dataclass(frozen=True)
class Observation:
    servers: core.Observed
    state_text: str  # ``show servers state`` as HAProxy wrote it: the server-state file's content
    backends: frozenset[str]


def _parse(text: str) -> tuple[dict, str, frozenset[str]]:
    """``show servers state`` then ``show stat`` (servers only) then ``show backend``, in one answer."""
    lines = text.splitlines()
    try:
        stat_at = next(i for i, line in enumerate(lines) if line.startswith("# pxname,"))
        backend_at = next(i for i, line in enumerate(lines) if line.startswith("# name") and i > stat_at)
    except StopIteration:
        raise ValueError(f"unexpected answer: {text[:200]!r}") from None
    state_lines = [line for line in lines[:stat_at] if line.strip()]
    header = next(line for line in state_lines if line.startswith("# be_id")).lstrip("# ").split()
    state = {}
    for line in state_lines:
        if line.startswith("#") or len(line.split()) < len(header):
            continue  # the format version line ("1"), comments
        row = dict(zip(header, line.split()))
        state[(row["be_name"], row["srv_name"])] = row
    stats = {}
    csv_text = "\n".join(line for line in lines[stat_at:backend_at] if line.strip()).lstrip("# ")
    for row in csv.DictReader(io.StringIO(csv_text)):
        stats[(row["pxname"], row["svname"])] = row
    servers = {}
    for key, row in state.items():
        stat = stats.get(key, {})
        check = " ".join(x for x in (stat.get("status", ""), stat.get("check_status", ""),
                                     stat.get("check_desc", ""), stat.get("last_chk", "")) if x)
        servers[key] = core.ServerState(
            backend=key[0], name=key[1], address=row["srv_addr"], port=int(row["srv_port"]),
            weight=int(row["srv_uweight"]), admin=int(row["srv_admin_state"]),
            running=row["srv_op_state"] == "2", check=check,
            sessions=int(stat.get("scur") or 0), total=int(stat.get("stot") or 0),
            errors=sum(int(stat.get(k) or 0) for k in ("econ", "eresp", "hrsp_5xx")),
            backup=stat.get("bck") == "1")
    backends = frozenset(line.strip() for line in lines[backend_at + 1:] if line.strip() and not line.startswith("#"))
    state_text = "\n".join(lines[:stat_at]).strip() + "\n"
    return servers, state_text, backends


class Router:
    """One host's HAProxy, serving ``site``.  Channels are opened on ``conn``'s transport."""

    def __init__(self, conn: Connection | DockerHost, access: RouterAccess, site: core.Site) -> None:
        """``conn``: the host's SSH connection (fabric's ``Connection``), or the host
        driver, whose connection (``.conn``) may have been reopened since."""
        self.conn = conn
        self.access = access
        self.site = site
        self.name = access.host
        host, _, port = site.settings.admin.rpartition(":")
        self._admin = (host, int(port))

    # ------------------------------------------------------------ transport
    def _transport(self) -> paramiko.Transport:
        transport = self.conn.transport
        if transport is None or not transport.is_active():
            raise HostUnreachable("router: the SSH connection to the host was lost", host=self.name)
        return transport

    def send(self, line: str, what: str) -> str:
        """One Runtime API line; its whole answer.  A refused channel is retried for ``SETTLE`` s."""
        deadline = time.monotonic() + SETTLE
        while True:
            try:
                channel = self._transport().open_channel("direct-tcpip", self._admin, ("127.0.0.1", 0),
                                                         timeout=self.access.timeout)
                break
            except paramiko.ChannelException as exc:  # the host's sshd could not connect: nothing listens
                if time.monotonic() >= deadline:
                    raise RouterError(f"router {what}: the admin socket {self.site.settings.admin} does not "
                                      f"answer ({exc}); is HAProxy running with this config?", host=self.name) from None
                time.sleep(POLL_INTERVAL)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise HostUnreachable(f"router {what}: {exc or type(exc).__name__}", host=self.name) from None
        try:
            channel.settimeout(self.access.timeout)
            channel.sendall((line + "\n").encode())
            # sshd holds the answer (Nagle) until our delayed ACK of its last
            # packet: 44 ms per command on the sandbox, 0.6 ms with this.
            _ack_at_once(self._transport().sock)
            chunks = []
            while data := channel.recv(65536):
                chunks.append(data)
        except (socket.timeout, paramiko.SSHException, EOFError, OSError) as exc:
            raise RouterError(f"router {what}: no full answer to {line!r}: {exc or type(exc).__name__}",
                              host=self.name) from None
        finally:
            channel.close()
        # HAProxy ends every answer with a newline, even the empty one of a
        # ``set`` that worked: nothing at all means the command may never
        # have arrived, and must not pass for success.
        if not chunks:
            if not self.conn.transport or not self.conn.transport.is_active():
                raise HostUnreachable(f"router {what}: the SSH connection closed before an answer", host=self.name)
            raise RouterError(f"router {what}: the admin socket closed without answering {line!r}", host=self.name)
        return b"".join(chunks).decode("utf-8", "replace")

    def _run(self, command: router_steps.Command, what: str) -> str:
        answer = self.send(command.line, what)
        if not command.succeeded(answer):
            raise RouterError(f"router {what}: `{command.line}` answered {answer.strip()!r}", host=self.name)
        return answer

    def _exec(self, command: str, stdin: bytes | None, what: str) -> tuple[int, str]:
        """A shell command on the host, fed ``stdin`` (None: no input); its exit code and
        output (stdout, then stderr).  An empty ``stdin`` is still fed, so a ``cat >``
        gets its end of file (``Connection.run`` never closes the remote's input:
        a fresh router's empty server state hung its write until the timeout)."""
        timeout = max(self.access.timeout, 30.0)
        if stdin is not None:
            code, out = ssh.feed(self._transport(), command, stdin, host=self.name, what=f"router {what}",
                                 timeout=timeout)
        else:
            conn = getattr(self.conn, "conn", self.conn)  # the driver's current connection, or the connection
            code, stdout, stderr = ssh.run(conn, command, host=self.name, what=f"router {what}", timeout=timeout)
            out = stdout + stderr
        return code, out.decode("utf-8", "replace").strip()

    # ------------------------------------------------------------ observing
    def observe(self) -> Observation:
        """Every server of every backend, with check state and sessions: one command line."""
        answer = self.send("show servers state; show stat -1 4 -1; show backend", "observe")
        try:
            servers, state_text, backends = _parse(answer)
        except (ValueError, KeyError, StopIteration) as exc:
            raise RouterError(f"router observe: cannot read the answer: {exc}", host=self.name) from None
        return Observation(servers, state_text, backends)

    def servers(self) -> core.Observed:
        self._seen = self.observe()
        return self._seen.servers

    def serves_site(self) -> bool | None:
        """Whether the running router (as last observed by ``servers``) has every
        backend of the site; None before any observation.  The config file's
        skeleton is not enough: a reload that failed after the file was written
        leaves the file saying what the process does not run."""
        seen = getattr(self, "_seen", None)
        return None if seen is None else core.backends(self.site) <= seen.backends

    def header(self) -> tuple[str | None, str | None]:
        """The skeleton hash and the owner the config file on the host names (None, None: not ours)."""
        code, out = self._exec(f"head -n 5 {shlex.quote(self.access.config_file)}", None, "read config")
        return (router_config.hash_in(out), router_owner.owner_in(out)) if code == 0 else (None, None)

    def maps(self) -> dict[str, dict[str, str]]:
        """``core.traffic``'s map entries (map -> backend -> value), one command line; {} without them."""
        files = self.site.settings.files
        if not files:
            return {}
        out = {}
        for name in traffic.MAPS:
            answer = self.send(f"show map {traffic.map_path(files, name)}", "read maps")
            # A config written before the maps existed: "Unknown map identifier".
            out[name] = {} if answer.lstrip().startswith("Unknown") else traffic.parse_map(answer)
        return out

    def view_maps(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((name, key, value) for name, entries in sorted(self.maps().items())
                     for key, value in sorted(entries.items()))

    def config_hash(self) -> str | None:
        """The skeleton hash of the config file on the host; None for a file we did not write."""
        return self.header()[0]

    def needs_configure(self) -> bool:
        """Whether the site's frontend or backends differ from the host's config (a reload is due)."""
        return self.config_hash() != router_config.skeleton_hash(self.site)

    # ------------------------------------------------------------ writing the config
    def persist(self, observation: Observation | None = None) -> None:
        """Write what the router runs now into its config and state file, so a restart restores it."""
        observation = observation or self.observe()
        text = router_owner.stamp(router_config.render_config(self.site, core.servers_by_backend(observation.servers)),
                                  self.access.owner)
        self._write_support_files()
        state_file = self.site.settings.state_file
        if state_file:
            tmp = shlex.quote(state_file + ".tmp")
            code, out = self._exec(f"umask 077; cat > {tmp} && mv -f {tmp} {shlex.quote(state_file)}",
                                   observation.state_text.encode(), "write server state")
            if code != 0:
                raise RouterError(f"router write {state_file}: exit {code}: {out}", host=self.name)
        cfg = self.access.config_file
        tmp = shlex.quote(cfg + ".tmp")
        if self.access.checker is not None:
            self._checked_write(cfg, text)
            return
        code, out = self._exec(f"umask 077; cat > {tmp} && {{ {self.access.check_command} {tmp} || exit 3; }} "
                               f"&& mv -f {tmp} {shlex.quote(cfg)}", text.encode(), "write config")
        if code == 3:
            if not out and " -q" in f" {self.access.check_command} ":
                # Quiet mode hides HAProxy's reason: ask again without it, on the rejected file.
                loud = " ".join(w for w in self.access.check_command.split() if w != "-q")
                _, out = self._exec(f"{loud} {tmp}", None, "explain the rejected config")
            raise RouterConfigRejected(f"router: `{self.access.check_command}` rejected the config for "
                                       f"{cfg}; the running one is unchanged: {out[-800:]}", host=self.name)
        if code != 0:
            raise RouterError(f"router write {cfg}: exit {code}: {out}", host=self.name)

    def _checked_write(self, cfg: str, text: str) -> None:
        """The config written beside ``cfg``, checked by ``access.checker``, then moved in place."""
        tmp = cfg + ".tmp"
        code, out = self._exec(f"umask 077; cat > {shlex.quote(tmp)}", text.encode(), "write config")
        if code != 0:
            raise RouterError(f"router write {tmp}: exit {code}: {out}", host=self.name)
        code, out = self.access.checker(tmp)
        if code != 0:
            raise RouterConfigRejected(f"router: haproxy -c rejected the config for {cfg}; the running one is "
                                       f"unchanged: {out[-800:]}", host=self.name)
        code, out = self._exec(f"mv -f {shlex.quote(tmp)} {shlex.quote(cfg)}", None, "write config")
        if code != 0:
            raise RouterError(f"router write {cfg}: exit {code}: {out}", host=self.name)

    def _write_support_files(self) -> None:
        """The Lua, the map files (the live entries) and the pages, before the config that names them."""
        from reconciler import resources

        if not self.site.settings.files:
            return
        lua = (resources.path("haproxy") / traffic.LUA_FILE).read_text()
        try:
            maps = self.maps()
        except RouterError:
            maps = {}  # the running config has no maps yet: they start empty
        files = traffic.support_files(self.site, maps, lua)
        script = "set -e; umask 022; mkdir -p " + shlex.quote(self.site.settings.files)
        payload = b""
        for path, text in files.items():
            data = text.encode()
            script += f"; head -c {len(data)} > {shlex.quote(path + '.tmp')} && mv -f {shlex.quote(path + '.tmp')} {shlex.quote(path)}"
            payload += data
        code, out = self._exec(f"sh -c {shlex.quote(script)}", payload, "write support files")
        if code != 0:
            raise RouterError(f"router write {self.site.settings.files}: exit {code}: {out}", host=self.name)

    def _worker(self) -> str:
        """The pid of the worker answering the Runtime API (``show info``)."""
        for line in self.send("show info", "show info").splitlines():
            if line.startswith("Pid:"):
                return line.split(":", 1)[1].strip()
        raise RouterError("router show info: no Pid line in the answer", host=self.name)

    def configure(self, *, deadline: float = 30.0) -> None:
        """Write the config for the site's skeleton with the live servers, reload, wait for the new worker.

        Until the new worker answers, commands could reach the old one and
        be lost with it: the wait is on the worker's pid changing, then on
        the backends being exactly the site's.
        """
        self.persist()
        old = self._worker()
        if self.access.reloader is not None:
            self.access.reloader()
        else:
            code, out = self._exec(self.access.reload_command, None, "reload")
            if code != 0:
                raise RouterError(f"router reload `{self.access.reload_command}`: exit {code}: {out}", host=self.name)
        wanted = core.backends(self.site)
        if not _poll(lambda: self._worker() != old and self.observe().backends == wanted, deadline):
            raise RouterError(f"router reload: no new worker serving backends {sorted(wanted)} {deadline:.0f}s "
                              f"after `{self.access.reload_command}` (see HAProxy's log)", host=self.name)

    # ------------------------------------------------------------ the steps
    def apply(self, step: router_steps.RouterStep, *, persist: bool = True):
        """Run one step; changes are written to the config after (``persist``).  Waits return their outcome:

        ``WaitUp`` a ``Verdict`` (unhealthy is the caller's to turn into a
        failed deploy), ``WaitDrained`` the sessions left at its deadline.
        ``persist=False`` leaves the write to the caller's ``persist()``,
        e.g. to switch several hosts first and write their files after.
        """
        if isinstance(step, router_steps.Configure):
            return self.configure()
        if isinstance(step, router_steps.WaitUp):
            return self.wait_up(step)
        if isinstance(step, router_steps.WaitDrained):
            return self.wait_drained(step)
        if isinstance(step, traffic.TrafficStep):
            return self._traffic(step, persist)
        what = f"{step.step} {step.backend}/{getattr(step, 'server', '')}"
        if isinstance(step, router_steps.AddServer):
            exists = (step.backend, step.server) in self.servers()
            for command in router_steps.commands(step, exists=exists):
                self._run(command, what)
        elif isinstance(step, router_steps.DelServer):
            self._delete(step, what)
        else:
            for command in router_steps.commands(step):
                self._run(command, what)
        if persist:
            self.persist()
        return None

    def _traffic(self, step: traffic.TrafficStep, persist: bool) -> None:
        files = self.site.settings.files
        if not files:
            raise RouterError(f"router {step.step}: this router's config has no traffic maps", host=self.name)
        if isinstance(step, traffic.WaitMirror):
            time.sleep(step.seconds)
            return None
        for command in traffic.commands(step, files, self.maps()):
            self._run(command, f"{step.step} {step.backend}")
        if persist:
            self.persist()
        return None

    def _delete(self, step: router_steps.DelServer, what: str) -> None:
        if (step.backend, step.server) not in self.servers():
            return  # gone already: a resumed run
        (command,) = router_steps.commands(step)
        # Idle connections to the server may take a moment to be released after maint.
        deadline = time.monotonic() + 5.0
        while True:
            answer = self.send(command.line, what)
            if command.succeeded(answer):
                return
            if "connection" not in answer.lower() or time.monotonic() >= deadline:
                raise RouterError(f"router {what}: `{command.line}` answered {answer.strip()!r}", host=self.name)
            time.sleep(POLL_INTERVAL)

    def wait_up(self, step: router_steps.WaitUp) -> Verdict:
        """Until the router sees the server UP (``rise`` passes in a row), or the deadline."""
        started = time.monotonic()
        evidence: list[CheckResult] = []
        while True:
            state = self.servers().get((step.backend, step.server))
            now = time.monotonic()
            if state is None or state.maint:
                detail = "not in the router" if state is None else "in maintenance"
                return Verdict("unhealthy", f"router: {step.backend}/{step.server} {detail}",
                               (CheckResult(False, detail, now, fatal=True),))
            result = CheckResult(state.up, f"router: {state.check}", now)
            if not evidence or evidence[-1].detail != result.detail:
                evidence.append(result)
            if state.up:
                return Verdict("healthy", f"router sees {step.server} UP: {state.check}", tuple(evidence[-5:]))
            if now - started >= step.deadline:
                return Verdict("unhealthy", f"router never saw {step.server} UP within {step.deadline:.0f}s; "
                                            f"last: {state.check}", tuple(evidence[-5:]))
            time.sleep(self._poll_interval(step.backend))

    def _poll_interval(self, backend: str) -> float:
        """Half the backend's check interval, within 50 ms and ``POLL_INTERVAL``: a fast check is seen soon."""
        try:
            interval = self.site.exposure(backend).check.interval
        except KeyError:
            return POLL_INTERVAL
        return max(0.05, min(POLL_INTERVAL, interval / 2))

    def wait_drained(self, step: router_steps.WaitDrained) -> int:
        """Until the server has no session, or the deadline; the sessions left (0: drained)."""
        started = time.monotonic()
        while True:
            state = self.servers().get((step.backend, step.server))
            if state is None or state.sessions == 0:
                return 0
            if time.monotonic() - started >= step.deadline:
                return state.sessions
            time.sleep(POLL_INTERVAL)


def _poll(check: Callable[[], bool], deadline: float) -> bool:
    end = time.monotonic() + deadline
    while True:
        if check():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(POLL_INTERVAL)

