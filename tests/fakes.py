"""An in-memory Docker host for the executor's tests (the ``HostDriver`` protocol).

``FakeHost`` behaves like ``hosts.DockerHost`` over a real engine, as far as
the executor can tell:

- containers have ids, names, labels (built by ``managed.labels_for``,
  the very function the real driver uses), a state, a finish time;
- ``create`` needs the image present and a free name; ``rename`` to a name in
  use, or to the container's own name, fails as Docker's does; ``start`` of a
  running container and ``stop`` of a stopped one are no-ops (Docker answers
  304); ``remove`` is forced and ignores a missing container (as DockerHost);
  ``remove_image`` is refused silently while a container uses the image;
- ``pull`` succeeds only for references the shared ``Registry`` holds;
- ``probe`` follows a script per image digest (``ALWAYS_OK``, ``NEVER_OK``,
  ``ok_for(n)``, ``exits_after(n)``, ``FLAPPING``), and a container that is
  not running fails the check as DockerHost's probe does (fatal when exited);
- any method can be made to fail: ``fail(method, on_call=N, error=...)`` for
  one call, ``go_down(after=N)`` for every call after the Nth of any method.

It also implements the database phase's ``DatabaseHost`` seam
(``adapters.db.images``): files shipped in an image (``Registry.ship``), an
image's id and creation time, one-off migration containers (what they do is
a script per image; every run is kept in ``one_offs``), secret files, and a
database tunnel that passes the DSN through (counted in ``tunnels``).

Every error is a ``reconciler.errors`` one carrying the host, like the real
driver's.  The fake also records whether two threads ever used it at once
(``concurrent_use``): DockerHost is not thread-safe.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

from reconciler.errors import EngineError, HostUnreachable, ReconcilerError
from reconciler.core.health import CheckResult
from reconciler.core.model import HealthCheck, ImageRef, Service
from reconciler.core.managed import ContainerSpec, ObservedContainer, ObservedHost, labels_for

# A probe script maps the container's probe number (0, 1, ...) to what that
# probe sees: True (passes), False (fails) or "exit" (the process exits).
Script = Callable[[int], Union[bool, str]]

ALWAYS_OK: Script = lambda n: True  # noqa: E731
NEVER_OK: Script = lambda n: False  # noqa: E731
FLAPPING: Script = lambda n: n % 2 == 0  # noqa: E731


def ok_for(probes: int) -> Script:
    """Passes the first ``probes`` checks, then fails for ever."""
    return lambda n: n < probes


def exits_after(probes: int) -> Script:
    """Passes ``probes`` checks, then the process exits."""
    return lambda n: True if n < probes else "exit"


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image(repository: str, tag: str) -> ImageRef:
    """A pinned reference with a digest derived from repository and tag."""
    return ImageRef(repository, tag, digest_of(f"{repository}:{tag}"))


class FakeClock:
    """Monotonic seconds that move only when someone sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.now += seconds
        self.slept += seconds

    def rfc3339(self) -> str:
        moment = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=self.now)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Registry:
    """What ``pull`` can fetch (by ``pull_ref``), and how each image behaves."""

    images: set[str] = field(default_factory=set)
    scripts: dict[str, Script] = field(default_factory=dict)  # by digest (or pull_ref when unpinned)
    logs: dict[str, str] = field(default_factory=dict)
    # which checks an image can answer at all (e.g. only v2 serves /healthz)
    answers: dict[str, Callable[[HealthCheck], bool]] = field(default_factory=dict)
    # the database seam, by pull_ref: directory -> {file name: text}; creation time; migration command
    files: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)
    commands: dict[str, Callable[[list[str], dict[str, str]], tuple[int, str]]] = field(default_factory=dict)

    def ship(self, ref: ImageRef, *, files: Mapping[str, Mapping[str, str]] = (), created: str | None = None,
             command: Callable[[list[str], dict[str, str]], tuple[int, str]] | None = None) -> ImageRef:
        """What an image holds for the database phase: ``files`` by directory,
        its creation time, what its migration command does (exit code, output)."""
        self.images.add(ref.pull_ref)
        self.files[ref.pull_ref] = {path: dict(names) for path, names in dict(files).items()}
        if created is not None:
            self.created[ref.pull_ref] = created
        if command is not None:
            self.commands[ref.pull_ref] = command
        return ref

    def publish(
        self, ref: ImageRef, script: Script = ALWAYS_OK, logs: str = "", answers: Callable[[HealthCheck], bool] = lambda check: True
    ) -> ImageRef:
        self.images.add(ref.pull_ref)
        self.scripts[ref.digest or ref.pull_ref] = script
        self.logs[ref.digest or ref.pull_ref] = logs
        self.answers[ref.digest or ref.pull_ref] = answers
        return ref


@dataclass
class FakeContainer:
    id: str
    name: str
    image: ImageRef
    labels: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    state: str = "created"
    finished_at: str = "0001-01-01T00:00:00Z"
    restart_count: int = 0
    probes: int = 0

    def observed(self) -> ObservedContainer:
        return ObservedContainer(
            id=self.id,
            name=self.name,
            state=self.state,
            labels=tuple(sorted(self.labels.items())),
            image_id=self.image.digest or self.image.pull_ref,
            finished_at=self.finished_at,
            restart_count=self.restart_count,
        )


@dataclass
class _Fault:
    method: str | None  # None: any method
    on_call: int  # 1-based count of calls to ``method`` (or to any method)
    error: type[ReconcilerError]
    sticky: bool  # keep failing after that call


class FakeHost:
    """One Docker host in memory.  See the module docstring for its rules."""

    _ids = 0
    _ids_lock = threading.Lock()

    def __init__(self, name: str, registry: Registry, clock: FakeClock) -> None:
        self.name = name
        self.registry = registry
        self.clock = clock
        self.containers: dict[str, FakeContainer] = {}
        self.images: set[str] = set()
        self.calls: dict[str, int] = {}
        self.total_calls = 0
        self.faults: list[_Fault] = []
        self.concurrent_use = False
        self._busy = threading.Lock()
        self.scripts: dict[str, Script] = {}  # per-host override of the registry's, by digest
        self.secret_files: dict[str, str] = {}
        self.one_offs: list[tuple[str, tuple[str, ...], dict[str, str]]] = []  # (image, argv, env) per run
        self.tunnels: list[FakeTunnel] = []

    # ------------------------------------------------------------ set-up
    def fail(self, method: str, *, on_call: int = 1, error: type[ReconcilerError] = HostUnreachable) -> None:
        """Make the ``on_call``-th call to ``method`` (counted from now) raise ``error``."""
        self.faults.append(_Fault(method, self.calls.get(method, 0) + on_call, error, sticky=False))

    def go_down(self, *, after: int = 0) -> None:
        """Every call after the next ``after`` calls (of any method) raises HostUnreachable."""
        self.faults.append(_Fault(None, self.total_calls + after + 1, HostUnreachable, sticky=True))

    def come_back(self) -> None:
        self.faults = [f for f in self.faults if not f.sticky]

    def add_image(self, ref: ImageRef) -> None:
        self.images.add(ref.pull_ref)

    def run_container(self, service: Service, environment: str, revision: str, name: str, *, state: str = "running") -> str:
        """Put a container on the host directly (as an earlier deploy would have)."""
        self.add_image(service.image)
        cid = self._create(service, ContainerSpec(environment, revision, name))
        self.containers[cid].state = state
        return cid

    def add_unmanaged(self, name: str, ref: ImageRef, *, labels: Mapping[str, str] = ()) -> str:
        self.add_image(ref)
        cid = self._new_id()
        self.containers[cid] = FakeContainer(cid, name, ref, dict(labels), state="running")
        return cid

    # ------------------------------------------------------------ looking
    def by_name(self, name: str) -> FakeContainer | None:
        return next((c for c in self.containers.values() if c.name == name), None)

    def snapshot(self) -> dict[str, tuple[str, str, str]]:
        """name -> (id, state, image): the world as a test compares it."""
        return {c.name: (c.id, c.state, str(c.image)) for c in self.containers.values()}

    # ------------------------------------------------------------ internals
    def _enter(self, method: str) -> None:
        if not self._busy.acquire(blocking=False):
            self.concurrent_use = True
            self._busy.acquire()
        time.sleep(0)  # yield the GIL while busy: a second thread using this host would show
        self.calls[method] = self.calls.get(method, 0) + 1
        self.total_calls += 1
        for fault in self.faults:
            if fault.method is None:
                hit = self.total_calls >= fault.on_call if fault.sticky else self.total_calls == fault.on_call
            else:
                hit = fault.method == method and self.calls[method] == fault.on_call
            if hit:
                self._busy.release()
                raise fault.error(f"{method}: injected {fault.error.__name__}", host=self.name)

    def _exit(self) -> None:
        self._busy.release()

    def _new_id(self) -> str:
        with FakeHost._ids_lock:
            FakeHost._ids += 1
            n = FakeHost._ids
        return hashlib.sha256(f"container-{n}".encode()).hexdigest()

    def _get(self, container_id: str, what: str) -> FakeContainer:
        container = self.containers.get(container_id)
        if container is None:
            raise EngineError(f"{what} {container_id[:12]}: No such container", host=self.name)
        return container

    def _create(self, service: Service, spec: ContainerSpec) -> str:
        if service.image.pull_ref not in self.images:
            raise EngineError(f"create {spec.name}: No such image: {service.image.pull_ref}", host=self.name)
        if self.by_name(spec.name) is not None:
            raise EngineError(f'create {spec.name}: Conflict. The container name "/{spec.name}" is already in use', host=self.name)
        cid = self._new_id()
        labels = labels_for(service, spec.environment, spec.revision)
        self.containers[cid] = FakeContainer(cid, spec.name, service.image, labels, env=dict(service.env))
        return cid

    def _stop(self, container: FakeContainer) -> None:
        if container.state in ("running", "restarting", "paused"):
            container.state = "exited"
            container.finished_at = self.clock.rfc3339()

    # ------------------------------------------------------------ HostDriver
    def ping(self) -> str:
        self._enter("ping")
        try:
            return "20.10.fake"
        finally:
            self._exit()

    def observe(self) -> ObservedHost:
        self._enter("observe")
        try:
            containers = sorted((c.observed() for c in self.containers.values()), key=lambda c: c.name)
            return ObservedHost(self.name, tuple(containers), tuple(sorted(r for r in self.images if "@" in r)))
        finally:
            self._exit()

    def has_image(self, image: ImageRef) -> bool:
        self._enter("has_image")
        try:
            return image.pull_ref in self.images
        finally:
            self._exit()

    def pull(self, image: ImageRef) -> None:
        self._enter("pull")
        try:
            if image.pull_ref not in self.registry.images:
                raise EngineError(f"pull {image.pull_ref}: manifest unknown", host=self.name)
            self.images.add(image.pull_ref)
        finally:
            self._exit()

    def create(self, service: Service, spec: ContainerSpec) -> str:
        self._enter("create")
        try:
            return self._create(service, spec)
        finally:
            self._exit()

    def start(self, container_id: str) -> None:
        self._enter("start")
        try:
            container = self._get(container_id, "start")
            if container.state != "running":
                container.state = "running"
                container.probes = 0  # a fresh process: its script starts again
        finally:
            self._exit()

    def stop(self, container_id: str, timeout: float) -> None:
        self._enter("stop")
        try:
            self._stop(self._get(container_id, "stop"))
        finally:
            self._exit()

    def rename(self, container_id: str, name: str) -> None:
        self._enter("rename")
        try:
            container = self._get(container_id, "rename")
            if container.name == name:
                raise EngineError(f"rename {container_id[:12]}: Renaming a container with the same name as its current name", host=self.name)
            if self.by_name(name) is not None:
                raise EngineError(f"rename {container_id[:12]} to {name}: Conflict. The name is already in use", host=self.name)
            container.name = name
        finally:
            self._exit()

    def remove(self, container_id: str) -> None:
        self._enter("remove")
        try:
            self.containers.pop(container_id, None)  # forced; a missing one is fine
        finally:
            self._exit()

    def remove_image(self, reference: str) -> None:
        self._enter("remove_image")
        try:
            if any(c.image.pull_ref == reference for c in self.containers.values()):
                return  # the engine refuses; DockerHost ignores the refusal
            self.images.discard(reference)
        finally:
            self._exit()

    def inspect(self, container_id: str) -> ObservedContainer:
        self._enter("inspect")
        try:
            return self._get(container_id, "inspect").observed()
        finally:
            self._exit()

    def probe(self, container_id: str, check: HealthCheck) -> CheckResult:
        self._enter("probe")
        try:
            now = self.clock()
            container = self._get(container_id, "inspect")
            if container.state == "running":
                key = container.image.digest or container.image.pull_ref
                script = self.scripts.get(key) or self.registry.scripts.get(key, ALWAYS_OK)
                seen = script(container.probes) if self.registry.answers.get(key, lambda c: True)(check) else False
                container.probes += 1
                if seen == "exit":
                    self._stop(container)
                else:
                    return CheckResult(bool(seen), f"{check.kind} check {'passed' if seen else 'failed'} on {container.name}", now)
            return CheckResult(False, f"container is {container.state}", now, fatal=container.state in ("exited", "dead"))
        finally:
            self._exit()

    def logs_tail(self, container_id: str, lines: int = 30) -> str:
        self._enter("logs_tail")
        try:
            container = self.containers.get(container_id)
            if container is None:
                return ""
            return self.registry.logs.get(container.image.digest or container.image.pull_ref, "")
        finally:
            self._exit()


    # ------------------------------------------------------------ DatabaseHost
    def _image(self, image: ImageRef, what: str) -> str:
        if image.pull_ref not in self.images:
            raise EngineError(f"{what}: No such image: {image.pull_ref}", host=self.name)
        return image.pull_ref

    def read_image_files(self, image: ImageRef, path: str) -> list[tuple[str, str]]:
        from reconciler.core.migrations import MigrationError

        self._enter("read_image_files")
        try:
            ref = self._image(image, f"create a container of {image} to read {path}")
            found = self.registry.files.get(ref, {}).get(path)
            if found is None:
                raise MigrationError([f"{self.name}: migrations.path {path} in {image}: no such directory in the image"])
            return sorted(found.items())
        finally:
            self._exit()

    def image_facts(self, image: ImageRef):
        from reconciler.core.contracts import ImageFacts

        self._enter("image_facts")
        try:
            ref = self._image(image, f"inspect image {image}")
            return ImageFacts(str(image), digest_of("config " + ref), self.registry.created.get(ref, "2026-01-01T00:00:00Z"))
        finally:
            self._exit()

    def run_one_off(self, image: ImageRef, argv, *, env, network, labels, timeout) -> tuple[int, str]:
        self._enter("run_one_off")
        try:
            ref = self._image(image, f"run {' '.join(argv)}")
            self.one_offs.append((str(image), tuple(argv), dict(env)))
            return self.registry.commands.get(ref, lambda argv, env: (0, ""))(list(argv), dict(env))
        finally:
            self._exit()

    def read_secret_file(self, path: str) -> str:
        self._enter("read_secret_file")
        try:
            if path not in self.secret_files:
                raise EngineError(f"read secret file {path}: no such file", host=self.name)
            return self.secret_files[path]
        finally:
            self._exit()

    def open_tunnel(self, address: str, port: int) -> "FakeTunnel":
        self._enter("open_tunnel")
        try:
            tunnel = FakeTunnel(self.name, address, port)
            self.tunnels.append(tunnel)
            return tunnel
        finally:
            self._exit()


@dataclass
class FakeTunnel:
    """A tunnel that passes the DSN through: the test's database is local."""

    host: str
    address: str
    port: int
    open: bool = False
    closed: bool = False

    def __enter__(self) -> "FakeTunnel":
        self.open = True
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.open, self.closed = False, True

    def dsn(self, dsn: str) -> str:
        assert self.open, "DSN asked of a tunnel that is not open"
        return dsn


class World:
    """Hosts sharing a registry and a clock, and the verbs tests use on them."""

    def __init__(self, *names: str) -> None:
        self.clock = FakeClock()
        self.registry = Registry()
        self.hosts = {name: FakeHost(name, self.registry, self.clock) for name in names}

    def observe(self) -> dict[str, ObservedHost]:
        return {name: host.observe() for name, host in self.hosts.items()}

    def plan(self, env, revision: str = "r1"):
        from reconciler.core.plan import plan_deploy

        return plan_deploy(env, self.observe(), revision)

    def executor(self, env, revision: str = "r1", **kwargs):
        import inspect

        from reconciler.engine.executor import Executor

        if "report" in kwargs and "report" not in inspect.signature(Executor).parameters:
            kwargs["observers"] = (kwargs.pop("report"),)  # the executor now takes a list of observers
        report = kwargs.pop("report", None)
        if report is not None:
            kwargs["observers"] = (report,)
        return Executor(env, self.hosts, revision, clock=self.clock, sleep=self.clock.sleep, **kwargs)

    def apply(self, env, revision: str = "r1", **kwargs):
        """Plan against the world as it is, then run the plan."""
        return self.executor(env, revision, **kwargs).apply(self.plan(env, revision))

    def snapshot(self) -> dict[str, dict]:
        return {name: host.snapshot() for name, host in self.hosts.items()}

    def active(self, environment: str, service: str) -> dict[str, tuple[str, str] | None]:
        """host -> (image, state) of the service's active container, or None."""
        out = {}
        for name, host in self.hosts.items():
            c = host.by_name(f"{environment}-{service}")
            out[name] = (str(c.image), c.state) if c else None
        return out

    @property
    def concurrent_use(self) -> bool:
        return any(h.concurrent_use for h in self.hosts.values())
