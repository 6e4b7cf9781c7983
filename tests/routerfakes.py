"""An in-memory HAProxy per host for the blue-green tests, beside ``fakes.FakeHost``.

``FakeRouter`` answers like ``adapters.router.Router``: it keeps servers
with an address, a weight, drain and maintenance flags and an UP state;
``WaitUp`` probes the container at the server's address with the host's
probe script (the same scripts ``fakes`` gives images), on the shared fake
clock, until ``rise`` passes in a row or the deadline; ``del server``
needs maintenance, as HAProxy's does.

What the tests assert through it: ``effective(backend)``, the servers
that would get a new request now (weight above 0, not draining, not in
maintenance, UP), is recorded after every router change and after every
container stop or removal (``RoutedHost``).  ``violations`` lists each
moment a backend that served had no effective server (a failed request),
or an effective server whose container was not running or never passed
its check (a request to an unhealthy container).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fakes import FakeHost, World
from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core import router_config
from reconciler.core import traffic
from reconciler.core.health import CheckResult, Verdict
from reconciler.core.model import HealthCheck
from reconciler.errors import RouterError


class Killed(BaseException):
    """The agent's process dies here (kill -9): nothing after it runs, nothing catches it."""


class RoutedHost(FakeHost):
    """A FakeHost whose containers have addresses, telling its router when one stops."""

    router: "FakeRouter | None" = None

    def address(self, container_id: str) -> str:
        self._get(container_id, "inspect")
        return f"172.31.{int(container_id[:2], 16)}.{int(container_id[2:4], 16)}"

    def stop(self, container_id: str, timeout: float) -> None:
        super().stop(container_id, timeout)
        if self.router is not None:
            self.router.record("stop")

    def remove(self, container_id: str) -> None:
        super().remove(container_id)
        if self.router is not None:
            self.router.record("remove")


@dataclass
class FakeServer:
    address: str
    port: int
    weight: int = 0
    drain: bool = False
    maint: bool = False
    up: bool = False
    checked: bool = False  # passed rise checks at least once while at this address
    errors: int = 0  # the router's error counters (5xx, connection and response errors)
    total: int = 0  # requests sent to it
    backup: bool = False  # requests only while no other server would take them


@dataclass
class FakeRouter:
    host: RoutedHost
    clock: object
    servers_: dict[tuple[str, str], FakeServer] = field(default_factory=dict)
    skeleton: str | None = None
    applied: list[str] = field(default_factory=list)  # step names, in order
    violations: list[str] = field(default_factory=list)
    served: set[str] = field(default_factory=set)  # backends that ever had an effective server
    kill_at: tuple[str, int] | None = None  # (step name, nth time): die before running it
    fail_at: tuple[str, int] | None = None  # (step name, nth time): the router refuses it (RouterError)
    configures: int = 0
    persisted: int = 0
    # Called with the router before every reading of its servers: a test's
    # traffic (``FakeServer.errors``/``total``) or a server going DOWN.
    traffic: object = None
    weights_seen: list[dict] = field(default_factory=list)  # backend weights at every reading
    maps_: dict[str, dict[str, str]] = field(default_factory=dict)  # core.traffic's map entries

    # ------------------------------------------------------------ the adapter's interface
    def servers(self) -> dict[tuple[str, str], rt.ServerState]:
        if self.traffic is not None:
            self.traffic(self)
        out = {}
        for (backend, name), s in self.servers_.items():
            admin = (rt.ADMIN_MAINT & 0x01 if s.maint else 0) | (0x08 if s.drain else 0)
            out[(backend, name)] = rt.ServerState(backend, name, s.address, s.port, s.weight, admin, s.up and not s.maint,
                                                  "L7OK" if s.up else "L7STS", total=s.total, errors=s.errors,
                                                  backup=s.backup)
        self.weights_seen.append({k: v.weight for k, v in self.servers_.items()})
        return out

    def config_hash(self) -> str | None:
        return self.skeleton

    def header(self) -> tuple[str | None, str | None]:
        return self.skeleton, getattr(self, "owner", None)

    def view_maps(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((n, k, v) for n, entries in sorted(self.maps_.items()) for k, v in sorted(entries.items()))

    def persist(self) -> None:
        self.persisted += 1

    def apply(self, step: router_steps.RouterStep, *, persist: bool = True):
        self.applied.append(step.step)
        self.persisted += persist
        if self.kill_at is not None and self.kill_at[0] == step.step:
            if self.applied.count(step.step) == self.kill_at[1]:
                raise Killed(f"killed before {step.step} on {self.host.name}")
        if self.fail_at is not None and self.fail_at[0] == step.step and self.applied.count(step.step) == self.fail_at[1]:
            raise RouterError(f"{step.step}: injected refusal", host=self.host.name)
        key = (step.backend, getattr(step, "server", ""))
        server = self.servers_.get(key)
        result = None
        if isinstance(step, traffic.TrafficStep):
            entry = step.entry()
            if entry is not None:
                name, value = entry
                if value is None:
                    self.maps_.get(name, {}).pop(step.backend, None)
                else:
                    self.maps_.setdefault(name, {})[step.backend] = value
            else:
                self.clock.sleep(step.seconds)  # WaitMirror
        elif isinstance(step, router_steps.Configure):
            self.configures += 1
            self.skeleton = self.site_hash
        elif isinstance(step, router_steps.AddServer):
            if server is None:
                self.servers_[key] = FakeServer(step.address, step.port, backup=step.backup)
            else:
                server.address, server.port, server.weight = step.address, step.port, 0
                server.maint = server.drain = server.up = server.checked = False
        elif isinstance(step, router_steps.WaitUp):
            result = self._wait_up(step, server)
        elif isinstance(step, router_steps.SetWeights):
            missing = [name for name, _ in step.weights if (step.backend, name) not in self.servers_]
            if missing:
                raise RouterError(f"set server {step.backend}/{missing[0]} weight: No such server.", host=self.host.name)
            for name, weight in step.weights:
                self.servers_[(step.backend, name)].weight = weight
        elif isinstance(step, router_steps.WaitDrained):
            result = 0
        elif isinstance(step, router_steps.DelServer):
            if server is not None:  # the adapter skips a server that is gone
                if not server.maint:
                    raise RouterError("Only servers in maintenance mode can be deleted.", host=self.host.name)
                del self.servers_[key]
        elif server is None:
            raise RouterError(f"{step.step} {step.backend}/{key[1]}: No such server.", host=self.host.name)
        elif isinstance(step, router_steps.Ready):
            server.drain = False
        elif isinstance(step, router_steps.Drain):
            server.drain = True
        elif isinstance(step, router_steps.Maint):
            server.maint, server.up = True, False
        self.record(step.step)
        return result

    site_hash: str | None = None  # what Configure writes: the tests set the desired site's hash

    def _wait_up(self, step: router_steps.WaitUp, server: FakeServer | None) -> Verdict:
        if server is None or server.maint:
            return Verdict("unhealthy", f"router: {step.backend}/{step.server} not in the router", ())
        started = self.clock()
        passes = 0
        evidence = []
        container = self._container_at(server.address)
        while True:
            ok = False
            if container is not None:
                result = self.host.probe(container, HealthCheck(kind="http", port=server.port))
                ok = result.ok
                evidence.append(CheckResult(ok, f"router: {result.detail}", self.clock()))
            passes = passes + 1 if ok else 0
            if passes >= 2:
                server.up = server.checked = True
                return Verdict("healthy", f"router sees {step.server} UP", tuple(evidence[-3:]))
            if self.clock() - started >= step.deadline:
                return Verdict("unhealthy", f"router never saw {step.server} UP within {step.deadline:.0f}s",
                               tuple(evidence[-3:]))
            self.clock.sleep(0.5)

    def _container_at(self, address: str) -> str | None:
        for cid in self.host.containers:
            if self.host.address(cid) == address:
                return cid
        return None

    # ------------------------------------------------------------ what a request would see
    def effective(self, backend: str) -> list[str]:
        """As HAProxy chooses: servers with weight, UP, not draining; the backup ones only when no other is."""
        live = [(name, s) for (b, name), s in self.servers_.items()
                if b == backend and s.weight > 0 and not s.drain and not s.maint and s.up]
        return sorted(name for name, s in live if not s.backup) or sorted(name for name, s in live if s.backup)

    def record(self, after: str) -> None:
        backends = {b for b, _ in self.servers_} | self.served
        for backend in sorted(backends):
            live = self.effective(backend)
            if live:
                self.served.add(backend)
            elif backend in self.served and not backend.endswith(".qa"):
                # (a QA backend empties on purpose: its requests then go to the service's backend)
                self.violations.append(f"{self.host.name}: after {after}, {backend} has no server for a request")
            for name in live:
                server = self.servers_[(backend, name)]
                cid = self._container_at(server.address)
                state = self.host.containers[cid].state if cid else "absent"
                if state != "running" or not server.checked:
                    self.violations.append(f"{self.host.name}: after {after}, {backend}/{name} gets requests "
                                           f"but its container is {state}")


class RoutedWorld(World):
    """A World whose hosts have routers; ``routers`` is what the executor and the planner take."""

    def __init__(self, *names: str) -> None:
        super().__init__(*names)
        self.hosts = {name: RoutedHost(name, self.registry, self.clock) for name in names}
        self.routers: dict[str, FakeRouter] = {}
        for name, host in self.hosts.items():
            router = FakeRouter(host, self.clock)
            host.router = router
            self.routers[name] = router

    def configure_for(self, env) -> None:
        """What a Configure writes on each host: the desired site's skeleton."""
        for name, router in self.routers.items():
            site = rt.site_for(env, name)
            router.site_hash = router_config.skeleton_hash(site) if site is not None else None

    def observe(self):
        from dataclasses import replace

        return {name: replace(host.observe(), router=rt.RouterView(
            tuple(v for _, v in sorted(self.routers[name].servers().items())), self.routers[name].skeleton,
            self.routers[name].view_maps()))
            for name, host in self.hosts.items()}

    def executor(self, env, revision: str = "r1", **kwargs):
        self.configure_for(env)
        return super().executor(env, revision, routers=self.routers, **kwargs)

    @property
    def violations(self) -> list[str]:
        return [v for r in self.routers.values() for v in r.violations]
