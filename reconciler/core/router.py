"""The traffic router of one host (HAProxy 2.6), as data.  Pure.

Two things live here, each tested by equality:

- **what a host's router serves**: its ``Site`` (settings and the
  exposure of each service) and its ``Server``s; ``core.router_config``
  renders them as HAProxy's config file;
- **what it was seen serving**: ``RouterView``, a host's router as the
  planner sees it (its servers' ``ServerState``s, its config's skeleton).

The switch itself as data (its steps, their Runtime API commands, what of
it is already in effect) is ``core.router_steps``'.

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
from typing import Literal, Mapping

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
