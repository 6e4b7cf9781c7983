"""The executor: runs a plan on the hosts, health-gated, rolling back on failure.

Its promises:
- pre-flight (engines answer, every image pulled by digest) changes nothing,
  so a failure there leaves every host as it was;
- a failed batch rolls back *every* (host, service) this run touched, not
  only the failing one, and verifies the restored containers are healthy;
- a rollback that fails stops loudly (``RollbackFailed``); it never loops.

Hosts are driven through a small interface (``HostDriver``, implemented by
``hosts.DockerHost`` and by the in-memory fake in the tests), one worker per
host, at most ``policy.parallel_hosts`` at a time.

Whatever watches a run (the journal, the log, the progress board, the record
of what each host served) is an *observer*: a callable ``(event, **fields)``.
The events: ``begin``/``done``/``failed`` of a step, ``rollback``,
``restored``, ``touched`` (the containers this run changed, with ``records``),
and ``serving`` (what a host runs for a service after a step changed it,
observed on the host).  The database steps go to the ``database`` object
(``dbphase.DatabaseSteps``); without a database they are refused.

Services with ``expose`` are switched through each host's router
(``Route`` steps, ``core.bluegreen``): the router is driven through
``routers`` (host -> ``adapters.router.Router``, built from the desired
state and the host drivers unless given).  A green the router never sees
UP is taken out of it before the deploy fails, so it never had a request;
the rollback of a switched host is the switch back (``_restore_routed``).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

from reconciler.core import managed, router_image
from reconciler.errors import DeployFailed, HostUnreachable, ReconcilerError, RollbackFailed
from reconciler.core.health import CheckResult
from reconciler.core.model import Environment, HealthCheck, ImageRef, Service
from reconciler.core.managed import ObservedContainer, ObservedHost
from reconciler.engine.container_steps import ContainerSteps
from reconciler.engine.routed import RoutedSteps, RouterDriver
from reconciler.engine.watching import WatchedSteps
from reconciler.core.canary import Observe, Release, Watch
from reconciler.core.traffic import DatabaseHold
from reconciler.core.plan import Plan
from reconciler.core.plan_steps import (
    DATABASE_STEPS,
    Action,
    Adopt,
    Aside,
    CheckHealth,
    Heal,
    Prune,
    Pull,
    Remove,
    Restore,
    Resume,
    Retire,
    Revive,
    Route,
    Start,
    Switch,
)


class HostDriver(Protocol):
    name: str

    def ping(self) -> str: ...
    def observe(self) -> ObservedHost: ...
    def has_image(self, image: ImageRef) -> bool: ...
    def pull(self, image: ImageRef) -> None: ...
    def create(self, service: Service, spec) -> str: ...
    def start(self, container_id: str) -> None: ...
    def stop(self, container_id: str, timeout: float) -> None: ...
    def rename(self, container_id: str, name: str) -> None: ...
    def remove(self, container_id: str) -> None: ...
    def remove_image(self, reference: str) -> None: ...
    def inspect(self, container_id: str) -> ObservedContainer: ...
    def probe(self, container_id: str, check: HealthCheck) -> CheckResult: ...
    def logs_tail(self, container_id: str, lines: int = 30) -> str: ...
    def address(self, container_id: str) -> str: ...  # where the host's router reaches the container


Reporter = Callable[..., None]


class DatabaseSteps(Protocol):
    """Runs the plan's CheckMigrations, Backup and Migrate steps (engine.dbphase)."""

    def run(self, action: Action) -> None: ...


def _quiet(event: str, **fields) -> None:
    pass


@dataclass
class Touched:
    """What one (host, service) looked like before this run changed it."""

    host: str
    service: str
    previous: str | None = None  # id of the container that was active
    new: str | None = None  # id of the container this run created or restored
    # A restored container was a retired one: undoing the restore retires it
    # again under this name instead of removing it.
    new_was: str | None = None


@dataclass
class Outcome:
    environment: str
    revision: str
    result: str  # in-sync, deployed, rolled-back, failed
    steps: list[dict] = field(default_factory=list)
    failure: str | None = None
    # True when the failure was the network's, not the commit's: the same
    # commit should be tried again (a host was unreachable), unlike a failed
    # health check, which waits for a new commit.
    transient: bool = False
    evidence: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


class Executor(ContainerSteps, RoutedSteps, WatchedSteps):
    def __init__(
        self,
        desired: Environment,
        hosts: Mapping[str, HostDriver],
        revision: str,
        *,
        observers: Sequence[Reporter] = (),
        database: DatabaseSteps | None = None,
        seeds: Sequence[Touched] = (),
        routers: Mapping[str, RouterDriver] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.desired = desired
        self.hosts = hosts
        self.revision = revision
        self.observers = tuple(observers)
        self.database = database
        if routers is None:
            from reconciler.engine import routing

            routers = routing.RouterMap(desired, hosts)
        self.routers = routers
        self.clock = clock
        self.sleep = sleep
        self.wall = wall
        # Workers of different hosts change entries while another reports them.
        self._touched_lock = threading.RLock()
        self.touched: dict[tuple[str, str], Touched] = {}
        for seed in seeds:  # what an interrupted run changed: still ours to roll back
            self.touched[(seed.host, seed.service)] = Touched(seed.host, seed.service, seed.previous, seed.new, seed.new_was)
        self.health_failure: tuple[str, str, str] | None = None  # host, service, check
        self.workers = ThreadPoolExecutor(max_workers=max(1, desired.policy.parallel_hosts))

    def report(self, event: str, **fields) -> None:
        for observer in self.observers:
            observer(event, **fields)

    # ----------------------------------------------------------- running
    def preflight(self, plan: Plan) -> None:
        """Engines answer and images are present; raises before any change,
        naming every host that failed (not only the first)."""
        needed = sorted({a.host for a in plan.actions if a.host})
        pings = [Action(h, "", "engine answers") for h in needed]
        errors = [exc for _, exc in self._per_host(pings, lambda a: self.hosts[a.host].ping()) if exc]
        pulls = [a for a in plan.actions if isinstance(a, Pull)]
        if not errors:
            for action, exc in self._per_host(pulls, self._ensure_image):
                outcome = {"error": str(exc)} if exc else {"reason": action.reason}
                self.report("failed" if exc else "done", step=action.step, host=action.host, service=action.service, **outcome)
                errors += [exc] if exc else []
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise type(errors[0])(f"pre-flight failed on {len(errors)} hosts, nothing changed:\n" + "\n".join(map(str, errors)))

    def _ensure_image(self, action: Pull) -> None:
        driver = self.hosts[action.host]
        if not driver.has_image(action.image):
            driver.pull(action.image)

    def apply(self, plan: Plan) -> Outcome:
        outcome = Outcome(plan.environment, plan.revision, "in-sync", started=time.time())
        try:
            if plan.in_sync:
                return outcome
            self.preflight(plan)
            database, deploy, maintenance = split_phases(plan.actions)
            # After pre-flight, before the first container change: a refusal
            # or failure here leaves every host, and the schema, as they were.
            try:
                self._run_groups(database, outcome)
            except ReconcilerError:
                self._release_held(database)  # held requests are never left to time out
                raise
            try:
                self._run_groups(deploy, outcome)
            except ReconcilerError as failure:
                if not self.touched:
                    raise  # nothing changed anywhere: the caller reports the cause
                outcome.failure = str(failure)
                outcome.evidence = list(getattr(failure, "evidence", []))
                outcome.transient = failure.kind == "transient"
                unreachable = self.rollback()
                outcome.result = "rolled-back"
                if unreachable:
                    outcome.transient = True
                    outcome.failure += "\nnot restored (unreachable; the next reconcile converges them): " + ", ".join(unreachable)
                return outcome
            outcome.result = "deployed"
            # Healing drift, pruning and removing come after the deploy is
            # complete and healthy: their failure is reported, but it is no
            # reason to take back a good deploy.
            try:
                self._run_groups(maintenance, outcome)
            except ReconcilerError as failure:
                outcome.failure = str(failure)
                outcome.evidence = list(getattr(failure, "evidence", []))
                outcome.transient = failure.kind == "transient"
                if not deploy:
                    outcome.result = "failed"
            return outcome
        finally:
            outcome.finished = time.time()
            self.workers.shutdown(wait=True)

    def _run_groups(self, actions: Sequence[Action], outcome: Outcome) -> None:
        for _, group in itertools.groupby(actions, key=_group_key):
            group = list(group)
            self._parallel_actions(group, self._run)
            outcome.steps.extend({"step": a.step, "host": a.host, "service": a.service} for a in group)

    def _per_host(self, items: Sequence, fn, catch: type[Exception] = ReconcilerError) -> list[tuple[object, Exception | None]]:
        """Run ``fn`` on every item, hosts in parallel, one host's items in order.

        A host driver is not thread-safe (DockerHost owns one engine client
        and one SSH connection), so one host's items never run at once, even
        when several share a step (the pulls of two services).  Returns each
        item with the ``catch`` error it raised (or None), in input order.
        """
        by_host: dict[str, list] = {}
        for item in items:
            by_host.setdefault(item.host, []).append(item)

        def run(host_items: list) -> list[tuple[object, Exception | None]]:
            out: list[tuple[object, Exception | None]] = []
            for item in host_items:
                try:
                    fn(item)
                    out.append((item, None))
                except catch as exc:
                    out.append((item, exc))
            return out

        futures = [self.workers.submit(run, host_items) for host_items in by_host.values()]
        results = {id(item): exc for future in futures for item, exc in future.result()}
        return [(item, results[id(item)]) for item in items]

    def _parallel_actions(self, actions: Sequence[Action], fn) -> None:
        errors = []
        for action, exc in self._per_host(actions, fn):
            if exc is None:
                self.report("done", step=action.step, host=action.host, service=action.service, reason=action.reason)
            else:
                self.report("failed", step=action.step, host=action.host, service=action.service, error=str(exc))
                errors.append(exc)
        if errors:
            # A health failure outranks a transient error elsewhere: it is
            # the verdict the user needs to read.
            errors.sort(key=lambda e: not isinstance(e, DeployFailed))
            raise errors[0]

    # ----------------------------------------------------------- steps
    def _service(self, name: str) -> Service:
        return self.desired.service(name)

    def _find(self, host: str, service: str, role: str) -> ObservedContainer | None:
        for c in self.hosts[host].observe().managed(self.desired.name):
            if c.service == service and c.role == role:
                return c
        return None

    def _track(self, host: str, service: str) -> Touched:
        with self._touched_lock:
            return self.touched.setdefault((host, service), Touched(host, service))

    def _set(self, touched: Touched, **changes) -> None:
        """Change what this run touched, and tell the observers at once: the
        journal must hold a container's id before the next step affects it."""
        with self._touched_lock:
            for name, value in changes.items():
                setattr(touched, name, value)
            records = [dict(host=t.host, service=t.service, previous=t.previous, new=t.new, new_was=t.new_was)
                       for t in self.touched.values()]
        self.report("touched", records=records)

    def _run(self, action: Action) -> None:
        self.report("begin", step=action.step, host=action.host, service=action.service, reason=action.reason)
        if isinstance(action, DATABASE_STEPS):
            if self.database is None:
                raise ReconcilerError(f"{action.step} {action.service or ''}: the plan has a database step but no database is configured")
            self.database.run(action)
            return
        try:
            self._run_host_step(action)
        except DeployFailed as exc:
            if self.health_failure is None:
                self.health_failure = (exc.host or action.host, action.service, self._check_name(action.service))
            raise
        finally:
            if isinstance(action, _CHANGES_SERVING):
                self._report_serving(action.host, action.service)

    def _check_name(self, service: str) -> str:
        known = {s.name for s in self.desired.services}
        return self.desired.service(service).health.kind if service in known else "health"

    def _report_serving(self, host: str, service: str) -> None:
        """What the host runs for the service now, as observed (for history --at)."""
        try:
            active = self._find(host, service, managed.ROLE_ACTIVE)
        except ReconcilerError:
            return  # the host is gone: the next observation says what it runs
        running = active is not None and active.running
        self.report("serving", host=host, service=service, at=self.wall(),
                    image=active.image if running else None, container=active.id if active else None,
                    state=active.state if active else "absent", revision=active.revision if active else None)

    def _run_host_step(self, action: Action) -> None:
        driver = self.hosts[action.host]
        if isinstance(action, (router_image.StartRouter, router_image.RemoveRouter)):
            from reconciler.engine import router_container

            if isinstance(action, router_image.StartRouter):
                router_container.start(driver, self.desired, action, self.routers[action.host])
            else:
                router_container.remove(driver, action)
        elif isinstance(action, Route):
            self._route(driver, action)
        elif isinstance(action, (Observe, Watch)):  # before CheckHealth: they are ones (core.canary)
            self._observe(action)
        elif isinstance(action, Release):  # the watch is over: the standby blue stops (core.canary)
            self._stop_retired(driver, action.service)
        elif isinstance(action, Adopt):
            container = self._named(action.host, action.container)
            self._set(self._track(action.host, action.service), new=container.id)
            if not container.running:
                driver.start(container.id)
        elif isinstance(action, Aside):
            self._aside(driver, self._named(action.host, action.container))
        elif isinstance(action, Revive):
            self._revive(driver, action)
        elif isinstance(action, Resume):
            self._resume(driver, action)
        elif isinstance(action, Retire):
            active = self._find(action.host, action.service, managed.ROLE_ACTIVE)
            if active is not None:
                self._set(self._track(action.host, action.service), previous=active.id)
                self._retire(driver, active)
        elif isinstance(action, Start):
            self._start(driver, self._service(action.service), action)
        elif isinstance(action, CheckHealth):
            touched = self._track(action.host, action.service)
            self.wait_healthy(driver, touched.new, self._service(action.service).health)
        elif isinstance(action, Switch):
            touched = self._track(action.host, action.service)
            active = self._find(action.host, action.service, managed.ROLE_ACTIVE)
            if active is not None:
                self._set(touched, previous=active.id)
                self._retire(driver, active, stop=not action.keep)
            driver.rename(touched.new, managed.container_name(self.desired.name, action.service))
            if self._service(action.service).expose is not None and not action.keep:
                self._stop_retired(driver, action.service)
        elif isinstance(action, Restore):
            self._restore(driver, action)
        elif isinstance(action, Heal):
            container = self._find(action.host, action.service, managed.ROLE_ACTIVE)
            if container is not None:
                driver.start(container.id)
                self.wait_healthy(driver, container.id, self._service(action.service).health)
        elif isinstance(action, Remove):
            for c in driver.observe().managed(self.desired.name):
                if c.name == action.container:
                    driver.stop(c.id, 10)
                    driver.remove(c.id)
                    if c.image and c.role != managed.ROLE_CANDIDATE:
                        driver.remove_image(ImageRef.parse(c.image).pull_ref)  # refused while in use
        elif isinstance(action, Prune):
            self._prune(driver, action)

    # ----------------------------------------------------------- rollback
    def rollback(self) -> list[str]:
        """Restore every touched (host, service) to the container it had.

        Returns the hosts that could not be reached to restore: they come
        back to the desired state at the next reconcile.  Any other failure
        to restore raises ``RollbackFailed`` once; it never retries.
        """
        # The failing check goes with the event: the journal keeps it with the
        # phase, so a restart that finishes this rollback still knows to
        # revert and not to retry.
        self.report("rollback", hosts=sorted({h for h, _ in self.touched}),
                    health=list(self.health_failure) if self.health_failure else None)
        problems: list[str] = []

        def restore(touched: Touched) -> None:
            driver = self.hosts[touched.host]
            env = self.desired.name
            exposure = self._exposure(touched.host, touched.service)
            if exposure is not None:
                self._restore_routed(driver, touched, exposure)
                self.report("restored", host=touched.host, service=touched.service)
                self._report_serving(touched.host, touched.service)
                return
            if touched.new is not None and touched.new_was is not None:
                driver.stop(touched.new, 10)
                if driver.inspect(touched.new).name != touched.new_was:  # a run that died before renaming it
                    driver.rename(touched.new, touched.new_was)
            elif touched.new is not None:
                driver.remove(touched.new)
            if touched.previous is None:
                return
            # If retiring failed before the rename (its stop failed), the old
            # container still has the service's name, and Docker refuses a
            # rename to the current name.
            name = managed.container_name(env, touched.service)
            if driver.inspect(touched.previous).name != name:
                driver.rename(touched.previous, name)
            driver.start(touched.previous)
            check = driver.inspect(touched.previous).health_check
            if check is None:  # deployed before the check was recorded in a label
                service = self._service(touched.service) if touched.service in {s.name for s in self.desired.services} else None
                check = service.health if service else HealthCheck()
            self.wait_healthy(driver, touched.previous, check)
            self.report("restored", host=touched.host, service=touched.service)
            self._report_serving(touched.host, touched.service)

        # Newest first (dependents before their dependencies); hosts in
        # parallel, one host's restores in order (see _per_host).
        unreachable: list[str] = []
        for touched, exc in self._per_host(list(reversed(self.touched.values())), restore, catch=Exception):
            if isinstance(exc, HostUnreachable):
                unreachable.append(f"{touched.host}/{touched.service}")
            elif exc is not None:  # every host gets its try before we give up
                problems.append(f"{touched.host}/{touched.service}: {exc}")
        if problems:
            raise RollbackFailed("rollback failed; these hosts need a human now:\n" + "\n".join(problems))
        return unreachable


_DEPLOY_STEPS = (Retire, Start, CheckHealth, Switch, Restore, Route, Adopt, Aside, Revive)
# Steps after which a host may serve something else for the service.
_CHANGES_SERVING = (Retire, Start, Switch, Restore, Heal, Resume, Remove)



def split_phases(actions: Sequence[Action]) -> tuple[list[Action], list[Action], list[Action]]:
    """The database steps, the deploy steps (rolled back together on
    failure) and the maintenance after them (heal, prune, remove).  The
    planner puts maintenance last; a Remove before the last deploy step
    clears a leftover for the deploy."""
    phase = (*DATABASE_STEPS, DatabaseHold)  # holds around the database steps go with them
    database = [a for a in actions if isinstance(a, phase)]
    work = [a for a in actions if not isinstance(a, (Pull, *phase))]
    last = max((i for i, a in enumerate(work) if isinstance(a, _DEPLOY_STEPS)), default=-1)
    return database, work[: last + 1], work[last + 1 :]


def _group_key(action: Action) -> tuple:
    return (action.service, getattr(action, "batch", None), action.step)


def run_plan(desired: Environment, hosts: Mapping[str, HostDriver], plan: Plan, *, report: Reporter = _quiet, **kwargs) -> Outcome:
    """Run ``plan`` with one observer; the engine's runs add the journal and the record."""
    return Executor(desired, hosts, plan.revision, observers=(report,), **kwargs).apply(plan)
