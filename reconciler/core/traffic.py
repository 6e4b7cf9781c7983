"""Traffic control at a host's router, besides the switch: mirroring, holding, maintenance.  Pure.

Three runtime switches per backend, each an entry of an HAProxy map file
keyed by the backend's name, set and removed through the Runtime API
(``add map`` / ``set map`` / ``del map``: no reload) and read back with
``show map`` like servers are observed, so a crashed run resumes from what
the router shows, and written to the map files after every change, so a
restarted HAProxy comes back as it was:

- ``mirror.map``: ``PERCENT@ADDR:PORT``.  Before a switch (``expose.mirror``)
  that share of the backend's requests is *also* sent to green.  HAProxy 2.6
  has no mirror directive; a Lua action (``_data/haproxy/reconciler.lua``)
  copies the request into a bounded queue that a few Lua *tasks* started
  with HAProxy send with ``core.httpclient()`` (allowed in a task).  The
  action returns at once: the client's request goes on to blue without
  waiting for the copy, green's answer is read and dropped by the task, and
  a full queue drops the copy (a slow green never piles up work in the
  router that serves blue).
  ``0@ADDR:PORT`` is a stopped mirror (kept so a resumed run knows the
  mirroring for that green is over).
- ``hold.map``: ``DEADLINE_MS``.  Requests wait in a Lua action
  (``core.msleep`` in a loop, which yields: no thread blocks) while the
  entry is there; at most ``DEADLINE_MS`` each, then 503 "held too long".
  Set by ``expose.pause`` (now, the ``reconciler pause`` lever) and around
  a deploy's database steps by ``expose.database_pause`` (Martin Fowler's
  read-only cutover: no request reaches either version while the schema
  changes, and none fails).
- ``maintenance.map``: ``on``.  Every request answered 503 with the page
  of ``expose.maintenance`` (a file next to the config; the page is part
  of the config skeleton, so a new page is a ``Configure``).

The files live in ``RouterSettings.files`` (a ``reconciler/`` directory
beside the config file); ``support_files`` gives their content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core.model import Environment
from reconciler.core.managed import ObservedHost
from reconciler.core.plan_steps import Action, Route

MAPS = ("mirror", "hold", "maintenance")
LUA_FILE = "reconciler.lua"
DEFAULT_PAGE = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Maintenance</title></head>"
                "<body><h1>Down for maintenance</h1><p>Please try again in a few minutes.</p></body></html>\n")
HELD_TOO_LONG = "held too long: the service is paused, try again"

Maps = Mapping[str, Mapping[str, str]]  # map name -> key (backend) -> value


def files_dir(config_file: str) -> str:
    """Where the router's support files go: ``reconciler/`` beside its config file."""
    head, _, _ = config_file.rpartition("/")
    return f"{head or '.'}/reconciler"


def map_path(files: str, name: str) -> str:
    return f"{files}/{name}.map"


def page_path(files: str, backend: str) -> str:
    return f"{files}/maintenance-{backend}.html"


def page_of(exposure: rt.Exposure) -> str:
    page = exposure.page if exposure.page is not None else DEFAULT_PAGE
    return page if page.endswith("\n") else page + "\n"


# ---------------------------------------------------------------- config text


def global_lines(settings: rt.RouterSettings) -> list[str]:
    if not settings.files:
        return []
    return [f"    setenv RECONCILER_HOLD_MAP {map_path(settings.files, 'hold')}",
            f"    lua-load {settings.files}/{LUA_FILE}"]


def backend_lines(settings: rt.RouterSettings, e: rt.Exposure) -> list[str]:
    """Maintenance first (answered at once), then the hold, then the mirror (of what goes on to a server)."""
    files = settings.files
    if not files:
        return []
    name = e.service
    digest = hashlib.sha256(page_of(e).encode()).hexdigest()[:16]
    return [
        f"    # maintenance page sha256:{digest}",
        f'    http-request return status 503 content-type "text/html; charset=utf-8" file {page_path(files, name)} '
        f"if {{ str({name}),map({map_path(files, 'maintenance')}) -m found }}",
        f"    http-request lua.reconciler_hold {name} if {{ str({name}),map({map_path(files, 'hold')}) -m found }}",
        f'    http-request return status 503 content-type text/plain string "{HELD_TOO_LONG}" '
        "if { var(txn.reconciler_held_out) -m found }",
        f"    http-request set-var(txn.reconciler_mirror) str({name}),map({map_path(files, 'mirror')})",
        # The share is drawn here (rand below PERCENT), so only the copied requests
        # run Lua at all, and a stopped mirror ("0@...") none.
        "    http-request set-var(txn.reconciler_mirror_percent) var(txn.reconciler_mirror),field(1,@) "
        "if { var(txn.reconciler_mirror) -m found }",
        "    http-request lua.reconciler_mirror if { var(txn.reconciler_mirror) -m found } "
        "{ rand(100),sub(txn.reconciler_mirror_percent) -m int lt 0 }",
    ]


def support_files(site: rt.Site, maps: Maps, lua: str) -> dict[str, str]:
    """path -> content of every file the config refers to: the Lua, the maps as they are, the pages."""
    files = site.settings.files
    if not files:
        return {}
    out = {f"{files}/{LUA_FILE}": lua}
    for name in MAPS:
        entries = maps.get(name, {})
        out[map_path(files, name)] = "".join(f"{k} {v}\n" for k, v in sorted(entries.items()))
    for e in site.exposures:
        out[page_path(files, e.service)] = page_of(e)
    return out


def parse_map(answer: str) -> dict[str, str]:
    """``show map FILE``: one ``0xID KEY VALUE`` line per entry."""
    out = {}
    for line in answer.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("0x"):
            out[parts[1]] = " ".join(parts[2:])
    return out


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class TrafficStep(router_steps.RouterStep):
    """A change of one map entry of ``backend`` (or a wait): see ``entry``."""

    def entry(self) -> tuple[str, str | None] | None:
        """(map, value to set, or None to remove); None for a wait."""
        raise NotImplementedError


@dataclass(frozen=True)
class StartMirror(TrafficStep):
    server: str = ""  # green's server name (for the plan's wording)
    address: str = ""  # filled in when the step runs (green's container address), like AddServer's
    port: int = 0
    percent: int = 0

    def entry(self):
        return "mirror", f"{self.percent}@{self.address}:{self.port}"


@dataclass(frozen=True)
class WaitMirror(TrafficStep):
    seconds: float = 0.0
    address: str = ""
    port: int = 0
    server: str = ""  # green's server name
    since: float = 0.0  # wall time the window began, when a dead run began it (``core.mirror_resume``)

    def entry(self):
        return None


@dataclass(frozen=True)
class StopMirror(TrafficStep):
    address: str = ""
    port: int = 0

    def entry(self):
        return "mirror", f"0@{self.address}:{self.port}"


@dataclass(frozen=True)
class HoldRequests(TrafficStep):
    deadline: float = 30.0

    def entry(self):
        return "hold", str(max(1, round(self.deadline * 1000)))


@dataclass(frozen=True)
class ReleaseRequests(TrafficStep):
    def entry(self):
        return "hold", None


@dataclass(frozen=True)
class MaintenanceOn(TrafficStep):
    def entry(self):
        return "maintenance", "on"


@dataclass(frozen=True)
class MaintenanceOff(TrafficStep):
    def entry(self):
        return "maintenance", None


# Steps that name green's address, filled in when they run (``engine.routed``).
ADDRESSED = (StartMirror, WaitMirror, StopMirror)


def commands(step: TrafficStep, files: str, current: Maps) -> tuple[router_steps.Command, ...]:
    """The Runtime API lines of a step, given the map entries the router has now."""
    entry = step.entry()
    if entry is None:
        return ()
    name, value = entry
    path = map_path(files, name)
    present = step.backend in current.get(name, {})
    if value is None:
        return (router_steps.Command(f"del map {path} {step.backend}"),) if present else ()
    if present:
        return (router_steps.Command(f"set map {path} {step.backend} {value}"),)
    return (router_steps.Command(f"add map {path} {step.backend} {value}"),)


def _mirror(maps: Maps, backend: str) -> tuple[int, str] | None:
    value = maps.get("mirror", {}).get(backend)
    if value is None or "@" not in value:
        return None
    percent, _, target = value.partition("@")
    return (int(percent) if percent.isdigit() else 0), target


def in_effect(step: TrafficStep, maps: Maps) -> bool:
    """Whether the router's maps already show what ``step`` brings about.

    The mirror is causal like the switch: started for this green (any
    share, stopped included: then the wait is over too), waited (stopped),
    stopped.  A fresh green has no address yet, so nothing is in effect for it.
    """
    if isinstance(step, (StartMirror, WaitMirror, StopMirror)):
        seen = _mirror(maps, step.backend)
        mine = seen is not None and bool(step.address) and seen[1] == f"{step.address}:{step.port}"
        if isinstance(step, StartMirror):
            return mine
        if isinstance(step, WaitMirror):
            return mine and seen[0] == 0
        return seen is None or seen[0] == 0 or not mine
    name, value = step.entry()
    return maps.get(name, {}).get(step.backend) == value


def resume(steps: Sequence[router_steps.RouterStep], view: rt.RouterView) -> tuple[router_steps.RouterStep, ...]:
    """``core.router.resume`` over servers and maps: the steps left from the first not in effect."""
    observed = view.observed
    for i, step in enumerate(steps):
        done = in_effect(step, view.maps_by_name) if isinstance(step, TrafficStep) else router_steps.in_effect(step, observed)
        if not done:
            return tuple(steps[i:])
    return ()


# ---------------------------------------------------------------- planning


def mirror_steps(host: str, backend: str, server: rt.Server, mirror) -> tuple[TrafficStep, ...]:
    """Start mirroring to green, keep it ``mirror.duration`` seconds, stop it."""
    return (StartMirror(host, backend, server.name, server.address, server.port, mirror.percent),
            WaitMirror(host, backend, mirror.duration, server.address, server.port, server.name),
            StopMirror(host, backend, server.address, server.port))


def with_mirror(full: Sequence[router_steps.RouterStep], mirror) -> tuple[router_steps.RouterStep, ...]:
    """The switch ``full`` with the mirror steps between green UP (and out of drain) and the switch itself."""
    if mirror is None:
        return tuple(full)
    at = next((i for i, s in enumerate(full) if isinstance(s, router_steps.SetWeights)), None)
    add = next((s for s in full if isinstance(s, router_steps.AddServer)), None)
    if at is None or add is None:
        return tuple(full)
    green = rt.Server(add.server, add.address, add.port)
    return (*full[:at], *mirror_steps(add.host, add.backend, green, mirror), *full[at:])


def reason(step: TrafficStep) -> str:
    if isinstance(step, StartMirror):
        return f"mirror {step.percent}% of live requests to {step.server} (its answers discarded)"
    if isinstance(step, WaitMirror):
        left = " (what is left of the window an interrupted run began)" if step.since else ""
        return f"keep mirroring for {step.seconds:g}s{left}"
    if isinstance(step, StopMirror):
        return "stop mirroring"
    if isinstance(step, HoldRequests):
        return f"hold new requests (each at most {step.deadline:g}s, then 503)"
    if isinstance(step, ReleaseRequests):
        return "release the held requests and serve again"
    if isinstance(step, MaintenanceOn):
        return "maintenance: answer 503 with the maintenance page"
    return "maintenance off: serve again"


def _exposed(desired: Environment, observed: Mapping[str, ObservedHost]):
    """(host, service, its view) for every exposed service on a host whose router was observed."""
    names = {h.name for h in desired.hosts}
    for host in sorted(observed):
        view = observed[host].router
        if host not in names or view is None:
            continue
        for service in desired.services:
            if service.expose is not None and host in service.hosts:
                yield host, service, view


def settle_steps(desired: Environment, observed: Mapping[str, ObservedHost]) -> list[TrafficStep]:
    """Maintenance and pause as the desired state says, level-based: each router's maps made to match."""
    steps: list[TrafficStep] = []
    for host, service, view in _exposed(desired, observed):
        maps = view.maps_by_name
        expose = service.expose
        wanted: list[TrafficStep] = [MaintenanceOn(host, service.name) if expose.maintenance is not None
                                     else MaintenanceOff(host, service.name)]
        wanted.append(HoldRequests(host, service.name, expose.pause.deadline) if expose.pause is not None
                      else ReleaseRequests(host, service.name))
        steps += [s for s in wanted if not in_effect(s, maps)]
    return steps


def database_hold(desired: Environment, observed: Mapping[str, ObservedHost]) -> tuple[list[TrafficStep], list[TrafficStep]]:
    """(holds before, releases after) a deploy's database steps, for services with ``database_pause``.

    A service paused now (``pause``) stays held after the database steps.
    """
    before: list[TrafficStep] = []
    after: list[TrafficStep] = []
    for host, service, _ in _exposed(desired, observed):
        hold = service.expose.database_pause
        if hold is None or service.expose.pause is not None:
            continue
        before.append(HoldRequests(host, service.name, hold.deadline))
        after.append(ReleaseRequests(host, service.name))
    return before, after


@dataclass(frozen=True)
class DatabaseHold(Route):
    """A ``HoldRequests``/``ReleaseRequests`` that belongs to the database phase: the executor
    runs it with the database steps, and releases on their failure too."""


def settle(desired: Environment, observed: Mapping[str, ObservedHost]) -> list[Action]:
    """``settle_steps`` as plan actions (before the deploys: a maintenance page or a pause first)."""
    return [Route(s.host, s.backend, reason(s), route=s, persist=True) for s in settle_steps(desired, observed)]


def around_database(desired: Environment, observed: Mapping[str, ObservedHost], steps: list[Action]) -> list[Action]:
    """The database steps, between holds and releases of the services with ``database_pause``."""
    if not steps:
        return steps
    before, after = database_hold(desired, observed)
    wrap = lambda s, why: DatabaseHold(s.host, s.backend, f"{reason(s)} {why}", route=s, persist=True)  # noqa: E731
    return ([wrap(s, "while the database changes") for s in before] + list(steps)
            + [wrap(s, "after the database steps") for s in after])
