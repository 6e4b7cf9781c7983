"""The container steps of a run, on one host: starting a release beside or in
place of the serving one, retiring it (kept, stopped, for a rollback),
reviving or restoring a retired one, pruning, and waiting until a container
is healthy (``core.health`` decides; this only runs the checks on time).

A mixin of the ``Executor`` (as ``RoutedSteps`` and ``WatchedSteps`` are):
each method is one step's effect through the host's driver, and records what
it changed on the run's ``Touched`` (``_track``/``_set``), so that a failed
batch rolls back exactly what this run did.  A container's role is its name
(``core.managed``): every rename here is a role change.
"""

from __future__ import annotations

from typing import Any

from reconciler.core import managed
from reconciler.core.health import CheckResult, Verdict, judge, next_check_at
from reconciler.core.managed import ContainerSpec, ObservedContainer
from reconciler.core.model import HealthCheck, ImageRef, Service
from reconciler.core.plan_steps import Prune, Restore, Resume, Revive, Start
from reconciler.errors import DeployFailed

HostDriver = Any  # engine.executor.HostDriver (that module imports this one)


class ContainerSteps:
    """Needs of the class it is mixed into: ``desired``, ``revision``, ``hosts``,
    ``clock``, ``sleep``, ``_service``, ``_track`` and ``_set``."""

    def _named(self, host: str, name: str) -> ObservedContainer:
        for c in self.hosts[host].observe().managed(self.desired.name):
            if c.name == name:
                return c
        raise DeployFailed(f"no container {name} on the host (removed since the plan was made?)", host=host)

    def _stop_retired(self, driver: HostDriver, service: str) -> None:
        """After a switch no retired copy runs (one set aside was drained by it)."""
        for c in driver.observe().managed(self.desired.name):
            if c.service == service and c.role == managed.ROLE_RETIRED and c.running:
                driver.stop(c.id, self._service(service).stop_timeout)

    def _aside(self, driver: HostDriver, container: ObservedContainer) -> None:
        name = managed.retired_name(self.desired.name, container)
        for c in driver.observe().managed(self.desired.name):
            if c.name == name and c.id != container.id:
                driver.remove(c.id)  # an identical older copy, as in _retire
        driver.rename(container.id, name)

    def _revive(self, driver: HostDriver, action: Revive) -> None:
        target = self._named(action.host, action.container)
        self._set(self._track(action.host, action.service), new=target.id, new_was=target.name)
        driver.rename(target.id, managed.container_name(self.desired.name, action.service, managed.ROLE_CANDIDATE))
        driver.start(target.id)

    def _retire(self, driver: HostDriver, active: ObservedContainer, stop: bool = True) -> None:
        name = managed.retired_name(self.desired.name, active)
        for c in driver.observe().managed(self.desired.name):
            if c.name == name and c.id != active.id:
                driver.remove(c.id)  # an identical older copy: the new retiree replaces it
        service = self._service(active.service) if active.service in {s.name for s in self.desired.services} else None
        if stop:
            driver.stop(active.id, service.stop_timeout if service else 10)
        driver.rename(active.id, name)

    def _restore(self, driver: HostDriver, action: Restore) -> None:
        env = self.desired.name
        containers = {c.name: c for c in driver.observe().managed(env)}
        target = containers[action.container]
        touched = self._track(action.host, action.service)
        active = containers.get(managed.container_name(env, action.service))
        if active is not None:
            self._set(touched, previous=active.id)
            self._retire(driver, active)
        self._set(touched, new=target.id, new_was=target.name)
        driver.rename(target.id, managed.container_name(env, action.service))
        driver.start(target.id)
        check = target.health_check or self._service(action.service).health
        self.wait_healthy(driver, target.id, check)

    def _start(self, driver: HostDriver, service: Service, action: Start) -> None:
        role = managed.ROLE_CANDIDATE if action.beside else managed.ROLE_ACTIVE
        name = managed.container_name(self.desired.name, service.name, role)
        for c in driver.observe().containers:
            if c.name == name:
                driver.remove(c.id)  # leftover of an interrupted run, never a serving one
        touched = self._track(action.host, service.name)
        self._set(touched, new=driver.create(service, ContainerSpec(self.desired.name, self.revision, name)))
        driver.start(touched.new)

    def _resume(self, driver: HostDriver, action: Resume) -> None:
        touched = self._track(action.host, action.service)
        self._set(touched, new=action.container)
        if action.rename:
            driver.rename(action.container, managed.container_name(self.desired.name, action.service))
        if not driver.inspect(action.container).running:
            driver.start(action.container)
        self.wait_healthy(driver, action.container, self._service(action.service).health)

    def _prune(self, driver: HostDriver, action: Prune) -> None:
        observed = {c.name: c for c in driver.observe().containers}
        for name in action.containers:
            container = observed.get(name)
            if container is None or container.role != managed.ROLE_RETIRED:
                continue
            driver.remove(container.id)
            if container.image:
                driver.remove_image(ImageRef.parse(container.image).pull_ref)

    # ----------------------------------------------------------- health
    def wait_healthy(self, driver: HostDriver, container_id: str, check: HealthCheck) -> Verdict:
        started = self.clock()
        results: list[CheckResult] = []
        while True:
            due = next_check_at(check, started, results[-1].at if results else None)
            delay = due - self.clock()
            if delay > 0:
                self.sleep(delay)
            results.append(driver.probe(container_id, check))
            verdict = judge(check, started, results, self.clock())
            if verdict.state == "healthy":
                return verdict
            if verdict.state == "unhealthy":
                logs = driver.logs_tail(container_id)
                failure = DeployFailed(f"health check failed: {verdict.reason}", host=driver.name)
                failure.evidence = [r.detail for r in verdict.evidence] + ([f"logs:\n{logs}"] if logs else [])
                raise failure
