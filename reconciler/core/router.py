"""The traffic router of one host (HAProxy 2.6), as data.  Pure.

Three things live here, each tested by equality:

- **what a host's router serves**: its ``Site`` (settings and the
  exposure of each service) and its ``Server``s; ``core.router_config``
  renders them as HAProxy's config file;
- **the switch as data**: ``switch_steps`` is the blue-green sequence
  (add green with weight 0 and the service's check, wait until the router
  sees it UP, move the weight, drain blue, wait until it has no session,
  take it out) and ``rollback_steps`` the same switch back to a retained
  blue; ``cutover_steps`` generalises both for the planner (any number of
  old servers, ``Ready`` for a server switched back to after it was
  drained); ``commands`` gives the Runtime API lines each step sends;
- **what is already in effect**: ``in_effect`` and ``resume`` read the
  router's observed servers, so a run that crashed mid-switch continues
  from the first step the router does not show done, like containers are
  observed (``RouterView``: a host's router as the planner sees it).

``site_for`` builds a host's ``Site`` from the desired state (the
environment's ``router:`` with ``{host}``/``{address}`` filled in, and the
``expose`` of each service on the host); ``core.bluegreen`` turns the
steps into plan actions.

HAProxy facts this relies on (2.6, measured): ``add server`` creates a
server in maintenance; ``set server .. state ready`` alone makes it UP at
once, before any check ran ("up, falls on the first failure"), so every add
is followed by ``health down`` in the same command line: UP then means
``rise`` consecutive passes.  ``del server`` needs maintenance and no
session.  Dynamic servers vanish on reload unless they are in the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from reconciler.core.model import Environment, HealthCheck, Host, RouterConfig, Service

FULL_WEIGHT = 100
DEFAULT_FALL = 2
UNROUTED_BACKEND = "reconciler-unrouted"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
_QUOTABLE_RE = re.compile(r'^[^"\\\n\r#]*$')
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a header or cookie name the config can hold unquoted


# ---------------------------------------------------------------- desired


@dataclass(frozen=True)
class RouterSettings:
    """The router of one host: where it listens and how it is controlled."""

    bind: str  # "ADDR:PORT" or ":PORT": the one frontend every exposed service shares
    admin: str = "127.0.0.1:9901"  # the Runtime API on the host's loopback, reached through SSH
    socket: str | None = None  # a root-only unix admin socket; it also hands listeners to a reloaded worker
    state_file: str | None = None  # HAProxy's server-state file: check states survive a reload or restart
    log: str | None = "/dev/log"
    files: str | None = None  # the directory of the Lua, map and page files (core.traffic); None: no traffic rules
    timeout_connect: float = 5.0
    timeout_client: float = 30.0
    timeout_server: float = 30.0


@dataclass(frozen=True)
class RouterCheck:
    """The active health check the router runs on every server of a backend."""

    kind: Literal["http", "tcp"] = "http"
    path: str = "/"
    expected_status: int = 200
    body_contains: str | None = None
    interval: float = 1.0
    timeout: float = 2.0
    rise: int = 2  # consecutive passes before a server is UP
    fall: int = DEFAULT_FALL


def router_check(health: HealthCheck) -> RouterCheck:
    """The router's check for a service's health check.

    The router can only speak HTTP or TCP to a server: ``command``,
    ``docker`` and ``running`` checks become a TCP connect to the exposed
    port here, and the engine-side check keeps running them.
    """
    kind = "http" if health.kind == "http" else "tcp"
    return RouterCheck(kind=kind, path=health.path, expected_status=health.expected_status,
                       body_contains=health.body_contains, interval=health.interval, timeout=health.timeout,
                       rise=max(1, health.successes))


@dataclass(frozen=True)
class Exposure:
    """How one service is reached through the host's router."""

    service: str  # also the backend's name
    port: int  # the container port its servers listen on
    hostnames: tuple[str, ...] = ()  # any of these Host headers; none: any host
    path: str | None = None  # this path and everything below it; None: any path
    check: RouterCheck = RouterCheck()
    # A canary (core.canary): the cookie that keeps a client on the version it
    # got, and the header/cookie that sends QA requests to the candidate's backend.
    sticky: str | None = None
    qa_header: str | None = None
    qa_cookie: str | None = None
    page: str | None = None  # the maintenance page (core.traffic); None: the default one

    @property
    def qa_backend(self) -> str | None:
        """The backend holding only the candidate, for QA requests; None without QA routing."""
        return qa_backend(self.service) if self.qa_header or self.qa_cookie else None

    def server(self, release: str, address: str) -> "Server":
        """The server a container of ``release`` (its config hash) at ``address`` is, weight 0."""
        return Server(server_name(self.service, release), address, self.port)


@dataclass(frozen=True)
class Site:
    """Everything one host's router serves."""

    settings: RouterSettings
    exposures: tuple[Exposure, ...] = ()

    def exposure(self, service: str) -> Exposure:
        for e in self.exposures:
            if e.service == service:
                return e
        raise KeyError(service)


@dataclass(frozen=True)
class Server:
    """One server of a backend: a container's address and port, as the router runs it."""

    name: str
    address: str
    port: int
    weight: int = 0
    state: Literal["ready", "drain", "maint"] = "ready"
    backup: bool = False  # gets requests only while no other server is UP (a standby, core.canary)


def qa_backend(service: str) -> str:
    """The QA backend of a service (a name no service can have: service names hold no dot)."""
    return f"{service}.qa"


def backends(site: "Site") -> set[str]:
    """Every backend the rendered config of ``site`` has."""
    return ({e.service for e in site.exposures} | {e.qa_backend for e in site.exposures if e.qa_backend}
            | {UNROUTED_BACKEND})


def server_name(service: str, release: str) -> str:
    """A server's name: per release (config hash), because HAProxy cannot rename one."""
    return f"{service}-{release[:12]}"


def _normal_path(path: str | None) -> str | None:
    if path is None or path.rstrip("/") == "":
        return None
    return path.rstrip("/")


def problems(site: Site) -> tuple[str, ...]:
    """Everything that would make the rendered config wrong or ambiguous; () when fine."""
    found = []
    seen: dict[str, int] = {}
    for e in site.exposures:
        if not _NAME_RE.match(e.service) or e.service == UNROUTED_BACKEND:
            found.append(f"service {e.service!r}: not usable as a router backend name")
        if not 0 < e.port < 65536:
            found.append(f"service {e.service}: port {e.port} out of range")
        for name in e.hostnames:
            if not _HOSTNAME_RE.match(name):
                found.append(f"service {e.service}: host name {name!r} is not a lowercase DNS name")
        if e.path is not None and not _PATH_RE.match(e.path):
            found.append(f"service {e.service}: path {e.path!r} must start with / and hold no space or quote")
        if e.check.body_contains is not None and not _QUOTABLE_RE.match(e.check.body_contains):
            found.append(f"service {e.service}: health body text cannot hold quotes, backslashes or #")
        if e.check.kind == "http" and not _PATH_RE.match(e.check.path):
            found.append(f"service {e.service}: health path {e.check.path!r} is not a plain path")
        for what, token in (("sticky cookie", e.sticky), ("QA header", e.qa_header), ("QA cookie", e.qa_cookie)):
            if token is not None and not TOKEN_RE.match(token):
                found.append(f"service {e.service}: {what} {token!r} must be letters, digits, '-' or '_'")
        seen[e.service] = seen.get(e.service, 0) + 1
    found += [f"service {name}: exposed twice on one host" for name, n in seen.items() if n > 1]
    for i, a in enumerate(site.exposures):
        for b in site.exposures[i + 1:]:
            same_path = _normal_path(a.path) == _normal_path(b.path)
            same_hosts = (not a.hostnames and not b.hostnames) or bool(set(a.hostnames) & set(b.hostnames))
            if same_path and same_hosts:
                found.append(f"services {a.service} and {b.service}: both claim host "
                             f"{sorted(set(a.hostnames) & set(b.hostnames)) or 'any'} path {a.path or '/'}")
    return tuple(found)


# ---------------------------------------------------------------- config text


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def server_options(check: RouterCheck, weight: int, backup: bool = False) -> str:
    """The keywords after ``ADDR:PORT`` on a server line, the same in config and ``add server``.

    Dynamic servers do not inherit ``default-server``, so every line carries them.
    """
    return (f"check inter {_duration(check.interval)} rise {check.rise} fall {check.fall} weight {weight}"
            + (" backup" if backup else ""))


# ---------------------------------------------------------------- observed


# Bits of ``srv_admin_state`` in ``show servers state`` (HAProxy's srv_admin).
ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
ADMIN_DRAIN = 0x08 | 0x10


@dataclass(frozen=True)
class ServerState:
    """One server as the router reports it (``show servers state`` and ``show stat``)."""

    backend: str
    name: str
    address: str
    port: int
    weight: int  # the user weight
    admin: int  # srv_admin_state bits
    running: bool  # srv_op_state is "running": the check says up
    check: str = ""  # last check: status and description, e.g. "L7OK Layer7 check passed"
    sessions: int = 0  # current sessions (scur)
    total: int = 0  # sessions ever sent to it (stot): health checks are not counted
    errors: int = 0  # connection and response errors plus 5xx answers, for a watch after the switch
    backup: bool = False  # a backup server: requests only while no other is UP

    @property
    def maint(self) -> bool:
        return bool(self.admin & ADMIN_MAINT)

    @property
    def drain(self) -> bool:
        return bool(self.admin & ADMIN_DRAIN)

    @property
    def up(self) -> bool:
        """Passed ``rise`` checks in a row and is not in maintenance."""
        return self.running and not self.maint

    def as_server(self) -> Server:
        state = "maint" if self.maint else "drain" if self.drain else "ready"
        return Server(self.name, self.address, self.port, self.weight, state, self.backup)


Observed = Mapping[tuple[str, str], ServerState]  # (backend, server) -> state


def servers_by_backend(observed: Observed) -> dict[str, tuple[Server, ...]]:
    """The observed servers as ``render_config`` takes them."""
    out: dict[str, list[Server]] = {}
    for (backend, _), state in sorted(observed.items()):
        out.setdefault(backend, []).append(state.as_server())
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class RouterView:
    """A host's router as observed before a plan: its servers and its config's skeleton."""

    servers: tuple[ServerState, ...] = ()
    skeleton: str | None = None  # the hash in the host's config file; None: a file we did not write
    maps: tuple[tuple[str, str, str], ...] = ()  # (map, backend, value): core.traffic's entries

    @property
    def maps_by_name(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for name, key, value in self.maps:
            out.setdefault(name, {})[key] = value
        return out

    @property
    def observed(self) -> dict[tuple[str, str], ServerState]:
        return {(s.backend, s.name): s for s in self.servers}

    def backend(self, name: str) -> tuple[ServerState, ...]:
        return tuple(s for s in self.servers if s.backend == name)


# ---------------------------------------------------------------- from the desired state


def settings_for(config: RouterConfig, host: Host) -> RouterSettings:
    """The settings of ``host``'s router: ``{host}`` and ``{address}`` filled in."""
    fill = lambda text: None if text is None else text.replace("{host}", host.name).replace("{address}", host.address)  # noqa: E731
    from reconciler.core.traffic import files_dir

    return RouterSettings(bind=fill(config.bind), admin=fill(config.admin), socket=fill(config.socket),
                          state_file=fill(config.state_file), log=fill(config.log),
                          files=files_dir(fill(config.config_file)))


def access_fields(config: RouterConfig, host: Host) -> dict[str, str]:
    """What the adapter's ``RouterAccess`` needs besides the host's name, filled in like the settings."""
    fill = lambda text: text.replace("{host}", host.name).replace("{address}", host.address)  # noqa: E731
    return {"config_file": fill(config.config_file), "reload_command": fill(config.reload),
            "check_command": fill(config.check)}


def exposure_of(service: Service) -> Exposure:
    """The router's view of an exposed service: its backend, port, rules and check."""
    expose = service.expose
    if expose is None:
        raise ValueError(f"service {service.name} is not exposed")
    canary = service.rollout.canary if service.rollout.strategy == "canary" else None
    page = expose.maintenance.page if expose.maintenance is not None else None
    if canary is None:
        return Exposure(service.name, expose.port, expose.hostnames, expose.path, router_check(service.health),
                        page=page)
    return Exposure(service.name, expose.port, expose.hostnames, expose.path, router_check(service.health),
                    sticky=f"rcl-{service.name}" if canary.sticky else None,
                    qa_header=canary.qa_header, qa_cookie=canary.qa_cookie, page=page)


def site_for(environment: Environment, host: str) -> Site | None:
    """Everything ``host``'s router serves for ``environment``; None when it serves nothing there."""
    if environment.router is None:
        return None
    exposures = tuple(exposure_of(s) for s in environment.services if s.expose is not None and host in s.hosts)
    if not exposures:
        return None
    return Site(settings_for(environment.router, environment.host(host)), exposures)


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class RouterStep:
    host: str
    backend: str

    @property
    def step(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Configure(RouterStep):
    """Write the config for a changed skeleton (a new backend or rule) and reload.

    ``backend`` is unused (""): it concerns the whole router of the host.
    """


@dataclass(frozen=True)
class AddServer(RouterStep):
    """Add ``server`` with weight 0 and the backend's check; it must pass ``rise`` checks."""

    server: str = ""
    address: str = ""
    port: int = 0
    check: RouterCheck = RouterCheck()
    sticky: bool = False  # the backend inserts a dynamic cookie: give this server its value
    backup: bool = False  # added as a backup server (a standby during the watch, core.canary)


@dataclass(frozen=True)
class WaitUp(RouterStep):
    server: str = ""
    deadline: float = 60.0  # seconds from the start of the wait


@dataclass(frozen=True)
class SetWeights(RouterStep):
    """Set weights in one command line, raised ones first: the backend never has weight 0 in all."""

    weights: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Ready(RouterStep):
    """Out of drain: a server switched back to (a rollback) may have been drained already."""

    server: str = ""


@dataclass(frozen=True)
class Drain(RouterStep):
    server: str = ""


@dataclass(frozen=True)
class WaitDrained(RouterStep):
    """Wait for ``server`` to have no session, or ``deadline`` seconds; then go on either way."""

    server: str = ""
    deadline: float = 30.0


@dataclass(frozen=True)
class Maint(RouterStep):
    server: str = ""


@dataclass(frozen=True)
class DelServer(RouterStep):
    server: str = ""


def switch_steps(host: str, backend: str, *, green: Server, blue: str | None, check: RouterCheck,
                 up_deadline: float, drain_deadline: float) -> tuple[RouterStep, ...]:
    """Blue-green on one host: green takes every new request once the router sees it UP.

    ``blue`` None is a first deploy: nothing to drain.  The caller stops
    blue's container after the last step and keeps it for a rollback.
    """
    steps: list[RouterStep] = [
        AddServer(host, backend, green.name, green.address, green.port, check),
        WaitUp(host, backend, green.name, up_deadline),
    ]
    if blue is None:
        return (*steps, SetWeights(host, backend, ((green.name, FULL_WEIGHT),)))
    return (*steps,
            SetWeights(host, backend, ((green.name, FULL_WEIGHT), (blue, 0))),
            Drain(host, backend, blue),
            WaitDrained(host, backend, blue, drain_deadline),
            Maint(host, backend, blue),
            DelServer(host, backend, blue))


def rollback_steps(host: str, backend: str, *, retained: Server, current: str, check: RouterCheck,
                   up_deadline: float, drain_deadline: float) -> tuple[RouterStep, ...]:
    """The switch back: the retained blue (started again) in, the current green drained out."""
    return switch_steps(host, backend, green=retained, blue=current, check=check,
                        up_deadline=up_deadline, drain_deadline=drain_deadline)


def cutover_steps(host: str, backend: str, *, green: Server, others: Sequence[str], check: RouterCheck,
                  up_deadline: float, drain_deadline: float, ready: bool = True,
                  sticky: bool = False) -> tuple[RouterStep, ...]:
    """Every new request of ``backend`` to ``green`` once the router sees it UP; each of ``others`` drained and taken out.

    ``switch_steps`` for a backend that may hold more than one old server
    (a leftover of an interrupted run) or a drained one to switch back to:
    ``Ready`` takes green out of drain before its weight is raised, which is
    in effect at once for a server never drained (``ready=False`` leaves it
    out for a server just added: nothing drained it).  One ``SetWeights``
    line moves every weight, so the backend never has all its servers at 0.
    """
    others = tuple(o for o in others if o != green.name)
    steps: list[RouterStep] = [
        AddServer(host, backend, green.name, green.address, green.port, check, sticky=sticky),
        WaitUp(host, backend, green.name, up_deadline),
        *((Ready(host, backend, green.name),) if ready else ()),
        SetWeights(host, backend, ((green.name, FULL_WEIGHT), *((o, 0) for o in others))),
    ]
    for other in others:
        steps += [Drain(host, backend, other), WaitDrained(host, backend, other, drain_deadline),
                  Maint(host, backend, other), DelServer(host, backend, other)]
    return tuple(steps)


def abandon_steps(host: str, backend: str, server: str) -> tuple[RouterStep, ...]:
    """Take out a green that never came UP: it never had weight, so nothing to drain."""
    return (Maint(host, backend, server), DelServer(host, backend, server))


@dataclass(frozen=True)
class Command:
    """One Runtime API line and the answers that mean success.

    ``ok`` holds prefixes of a successful answer (stripped); ``""`` stands
    for the empty answer HAProxy gives a ``set`` that worked.  A line of
    several ``;``-separated commands succeeds only with an empty answer.
    """

    line: str
    ok: tuple[str, ...] = ("",)

    def succeeded(self, answer: str) -> bool:
        answer = answer.strip()
        return any(answer.startswith(p) if p else answer == "" for p in self.ok)


def commands(step: RouterStep, exists: bool = False) -> tuple[Command, ...]:
    """The Runtime API commands of a step that changes the router (not the waits).

    ``exists``: for AddServer, the server is there already (a resumed run);
    it gets its address and a fresh check instead of a second ``add``.
    """
    ref = f"{step.backend}/{getattr(step, 'server', '')}"
    if isinstance(step, AddServer):
        # Ready and forced down in one line: UP then takes ``rise`` passes.
        rearm = Command(f"set server {ref} weight 0; set server {ref} state ready; set server {ref} health down")
        # A dynamic cookie is computed from the address: (re)computed once it is set.
        cookie = (Command(f"enable dynamic-cookie backend {step.backend}"),) if step.sticky else ()
        if exists:
            return (Command(f"set server {ref} state maint"),
                    Command(f"set server {ref} addr {step.address} port {step.port}",
                            ok=("IP changed from", "no need to change the addr", "port changed from")),
                    *cookie, Command(f"enable health {ref}"), rearm)
        return (Command(f"add server {ref} {step.address}:{step.port} {server_options(step.check, 0, step.backup)}",
                        ok=("New server registered.",)),
                *cookie, Command(f"enable health {ref}"), rearm)
    if isinstance(step, SetWeights):
        ordered = sorted(step.weights, key=lambda w: -w[1])
        return (Command("; ".join(f"set server {step.backend}/{name} weight {w}" for name, w in ordered)),)
    if isinstance(step, Ready):
        return (Command(f"set server {ref} state ready"),)
    if isinstance(step, Drain):
        return (Command(f"set server {ref} state drain"),)
    if isinstance(step, Maint):
        return (Command(f"set server {ref} state maint"),)
    if isinstance(step, DelServer):
        return (Command(f"del server {ref}", ok=("Server deleted.",)),)
    return ()


def in_effect(step: RouterStep, observed: Observed) -> bool:
    """Whether the router already shows what ``step`` brings about.

    Causal on purpose: blue with no session is not "drained" unless it is
    draining or out, otherwise a resumed run could skip the switch itself.
    """
    server = getattr(step, "server", "")
    state = observed.get((step.backend, server))
    if isinstance(step, AddServer):
        return (state is not None and not state.maint and state.address == step.address
                and state.port == step.port)
    if isinstance(step, WaitUp):
        return state is not None and state.up
    if isinstance(step, SetWeights):
        # A server to get weight 0 that is gone already gets no request either.
        return all(((s := observed.get((step.backend, name))) is not None and s.weight == w and not s.maint)
                   or (w == 0 and (s is None or s.weight == 0)) for name, w in step.weights)
    if isinstance(step, Ready):
        return state is not None and not state.drain and not state.maint
    if isinstance(step, Drain):
        return state is None or state.drain or state.maint
    if isinstance(step, WaitDrained):
        return state is None or ((state.drain or state.maint) and state.sessions == 0)
    if isinstance(step, Maint):
        return state is None or state.maint
    if isinstance(step, DelServer):
        return state is None
    return False


def resume(steps: Sequence[RouterStep], observed: Observed) -> tuple[RouterStep, ...]:
    """The steps left from the first one the router does not show in effect.

    A prefix, not "after the furthest": a blue absent from the router would
    make the last steps vacuously true, and skipping to them would skip the
    switch.  A green that went DOWN after its switch resumes at WaitUp; the
    watch after the switch, not this, decides to switch back.
    """
    for i, step in enumerate(steps):
        if not in_effect(step, observed):
            return tuple(steps[i:])
    return ()
