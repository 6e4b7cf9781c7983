"""The executor's router steps: a blue-green switch, and its undoing.

A mix-in of ``executor.Executor`` (which gives ``routers``, ``hosts``,
``desired``, ``touched``, ``_named``, ``_find``, ``_service`` and
``_stop_retired``): the ``Route`` steps of a plan run here, through the
host's router (``adapters.router.Router``, or a fake in the tests), and
so does the rollback of an exposed service, which is a switch back.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping, Protocol

from reconciler.core import managed, mirror_resume
from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core import switch_back, traffic
from reconciler.core.plan_steps import Route
from reconciler.errors import DeployFailed, RouterError

if TYPE_CHECKING:
    from reconciler.engine.executor import HostDriver, Touched


class RouterDriver(Protocol):
    """One host's router (``adapters.router.Router``)."""

    def servers(self) -> Mapping[tuple[str, str], rt.ServerState]: ...
    def config_hash(self) -> str | None: ...
    def header(self) -> tuple[str | None, str | None]: ...  # the config file's skeleton hash and owner
    def apply(self, step: router_steps.RouterStep, *, persist: bool = True): ...
    def persist(self) -> None: ...
    def view_maps(self) -> tuple[tuple[str, str, str], ...]: ...


class RoutedSteps:
    def _route(self, driver: HostDriver, action: Route) -> None:
        step = action.route
        router = self.routers[action.host]
        if isinstance(step, (router_steps.AddServer, *traffic.ADDRESSED)) and action.container:
            # A container has its address once started: read it now, not at planning.
            step = dataclasses.replace(step, address=driver.address(self._named(action.host, action.container).id))
        if isinstance(step, traffic.WaitMirror):
            step = self._mirror_window(step)
        outcome = router.apply(step, persist=action.persist)
        if isinstance(step, traffic.StartMirror):
            self._mirror_began(step, self.wall())
        if isinstance(step, router_steps.WaitUp) and outcome.state != "healthy":
            self._abandon(router, step)
            touched = self.touched.get((action.host, action.service))
            logs = driver.logs_tail(touched.new) if touched is not None and touched.new else ""
            failure = DeployFailed(f"health check failed: {outcome.reason}", host=action.host)
            failure.evidence = [r.detail for r in outcome.evidence] + ([f"logs:\n{logs}"] if logs else [])
            raise failure

    def _mirror_began(self, step: traffic.StartMirror | traffic.WaitMirror, since: float) -> None:
        """Remember (and journal: ``core.mirror_resume``) when mirroring to this green began."""
        seconds = getattr(step, "seconds", 0.0) or self._mirror_seconds(step.backend)
        fields = mirror_resume.event_fields(step.host, step.backend, step.server, step.address, step.port, since, seconds)
        self.__dict__.setdefault("_mirror_since", {})[(step.host, step.backend, step.server, fields["target"])] = since
        self.report(mirror_resume.EVENT, **fields)

    def _mirror_seconds(self, backend: str) -> float:
        service = next((s for s in self.desired.services if s.name == backend), None)
        mirror = service.expose.mirror if service is not None and service.expose is not None else None
        return mirror.duration if mirror is not None else 0.0

    def _mirror_window(self, step: traffic.WaitMirror) -> traffic.WaitMirror:
        """The wait for what is left of the window: begun by this run's StartMirror, or by a dead run
        (``step.since``, from its journal), else now."""
        began = self.__dict__.get("_mirror_since", {}).get((step.host, step.backend, step.server,
                                                              f"{step.address}:{step.port}"))
        since = step.since or began or self.wall()
        self._mirror_began(dataclasses.replace(step, since=since), since)
        left = max(0.0, since + step.seconds - self.wall())
        return dataclasses.replace(step, seconds=left, since=since)

    def _stop_mirror(self, router: RouterDriver, host: str, backend: str) -> None:
        """A mirror this run started is stopped with the switch back: its green is going away."""
        entry = {(n, k): v for n, k, v in router.view_maps()}.get(("mirror", backend))
        percent, _, target = (entry or "0@").partition("@")
        address, _, port = target.rpartition(":")
        if percent not in ("", "0") and port.isdigit():
            router.apply(traffic.StopMirror(host, backend, address, int(port)), persist=False)

    def _release_held(self, database_phase) -> None:
        """After a failed database step: every hold of the phase released (at once, each host)."""
        releases = [a for a in database_phase if isinstance(a, Route) and isinstance(a.route, traffic.ReleaseRequests)]
        for action, exc in self._per_host(releases, lambda a: self._route(self.hosts[a.host], a)):
            self.report("failed" if exc else "done", step=action.step, host=action.host, service=action.service,
                        **({"error": str(exc)} if exc else {"reason": action.reason}))

    def _abandon(self, router: RouterDriver, step: router_steps.WaitUp) -> None:
        """Take out a server the router never saw UP, unless it serves already
        (a resumed run whose green went down after its switch: that is for a
        rollback to switch away from, not for removing under load)."""
        state = router.servers().get((step.backend, step.server))
        if state is None or (state.weight > 0 and not state.drain and not state.maint):
            return
        for abandon in router_steps.abandon_steps(step.host, step.backend, step.server):
            router.apply(abandon, persist=isinstance(abandon, router_steps.DelServer))

    def _exposure(self, host: str, service: str) -> rt.Exposure | None:
        site = rt.site_for(self.desired, host) if host in {h.name for h in self.desired.hosts} else None
        return next((e for e in site.exposures if e.service == service), None) if site is not None else None

    def _restore_routed(self, driver: HostDriver, touched: Touched, exposure: rt.Exposure) -> None:
        """Put back an exposed service by switching the router back, then the containers.

        The container to serve again is the one this run retired, or the
        active one when the run never got to retire it (its green failed
        before the switch).  It is started, switched to once the router sees
        it UP (``resume``: whatever is in effect already is skipped, so a
        green that never got a request costs no router command), this run's
        release is put in maintenance (no request reaches it, not even a
        sticky client's; ``core.switch_back``) and waited for until its
        sessions in flight end, and only then its container is removed or
        retired again.
        """
        env, host, name = self.desired.name, touched.host, touched.service
        router = self.routers[host]
        service = self._service(name) if name in {s.name for s in self.desired.services} else None
        drain = service.expose.drain if service is not None and service.expose is not None else 30.0
        deadline = service.health.allowed if service else 60.0
        target = touched.previous
        failing = None  # this run's release, refused every request at once (core.switch_back)
        if target is None:
            active = self._find(host, name, managed.ROLE_ACTIVE)
            target = active.id if active is not None and active.id != touched.new else None
        if target is not None:
            seen = driver.inspect(target)
            if not seen.running:
                driver.start(target)
            green = exposure.server(seen.config_hash or seen.id, driver.address(target))
            observed = router.servers()
            others = [s for (b, s) in observed if b == name and s != green.name]
            if touched.new is not None and touched.new != target:
                new = driver.inspect(touched.new)
                failing = rt.server_name(name, new.config_hash or new.id)
            # This run's release is refused every request, a sticky client's too (core.switch_back).
            steps = switch_back.steps(host, name, retained=green, failing=failing, others=others, check=exposure.check,
                                      up_deadline=deadline, drain_deadline=drain, observed=observed,
                                      sticky=exposure.sticky is not None)
        elif touched.new is not None:
            # Nothing to go back to (a first deploy): this run's server out, like its container.
            new = driver.inspect(touched.new)
            out = rt.server_name(name, new.config_hash or new.id)
            steps = (router_steps.Drain(host, name, out), router_steps.WaitDrained(host, name, out, drain), router_steps.Maint(host, name, out),
                     router_steps.DelServer(host, name, out))
        else:
            steps = ()
        observed = router.servers()
        left = switch_back.resume(steps, observed)
        if exposure.qa_backend:
            # QA requests stop going to this run's release first (maintenance: at once) and
            # its QA server goes after the switch back (a delete may wait for connections).
            # Each on its own: they must not make ``resume`` replay the steps in effect.
            qa = exposure.qa_backend
            out = sorted(srv for (b, srv) in observed if b == qa)
            left = (*(s for s in (router_steps.Maint(host, qa, srv) for srv in out) if not router_steps.in_effect(s, observed)),
                    *left, *(router_steps.DelServer(host, qa, srv) for srv in out))
        for step in left:
            outcome = router.apply(step, persist=isinstance(step, router_steps.Drain))
            if isinstance(step, router_steps.Maint) and step.backend == name and step.server == failing:
                self.report("aborted", host=host, service=name, server=step.server,
                            reason=f"{step.server} in maintenance: no request reaches it, a sticky one neither")
            if isinstance(step, router_steps.WaitUp) and outcome.state != "healthy":
                raise RouterError(f"switch back to {step.server}: {outcome.reason}; the router still "
                                  f"sends requests to this run's release", host=host)
        self._stop_mirror(router, host, name)
        if left:
            router.persist()  # before this run's container stops: a restarted router keeps the switch back
        if touched.new is not None and touched.new != target:
            if touched.new_was is not None:
                driver.stop(touched.new, 10)
                if driver.inspect(touched.new).name != touched.new_was:  # a run that died before renaming it
                    driver.rename(touched.new, touched.new_was)
            else:
                driver.remove(touched.new)
        if target is not None:
            if driver.inspect(target).name != managed.container_name(env, name):
                driver.rename(target, managed.container_name(env, name))
            if service is not None:
                self._stop_retired(driver, name)
