"""Blue-green through each host's router, as plan steps.  Pure.

For a service with ``expose``, a deploy on one host is: ``Start`` green
beside blue (``-next``, its own address: no port is clashed over), the
router's switch (``core.router.cutover_steps``: add green with weight 0
and the service's check, wait until the router sees it UP, move every
weight to it, drain blue until it has no session or the drain deadline,
take blue out), then ``Switch`` (stop blue, keep it as a retired copy,
give green the service's name).  A rollback is the same switch back to a
retained container (``Revive`` starts it as the candidate).

The router's state is observed like the containers' (``ObservedHost.router``),
so a run that died mid-switch is continued from what the router shows
(``core.router.resume``): its candidate is adopted, not removed, when the
router knows it.  Without an observation of the router (``router`` None:
a caller that read containers only) the full switch is planned and nothing
is planned for services already running the desired release.

The steps of one batch are interleaved across its hosts by their position
in the full sequence, so hosts that resume at different steps line up and
each step runs on all of them at once.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from reconciler.core import managed
from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core import router_config
from reconciler.core import traffic
from reconciler.core.model import Environment, Service
from reconciler.core.managed import ObservedContainer, ObservedHost
from reconciler.core.plan_steps import Action, Adopt, Aside, CheckHealth, Remove, Revive, Route, Start, Switch

# The router checks HTTP and TCP itself; any other check is also run on the
# engine before the router gets the server (the router then checks TCP).
ROUTER_CHECKED = ("http", "tcp")
_SWITCH_AT = 1000  # the Switch's position: after every router step of every host

Pairs = Mapping[tuple[str, str], list[ObservedContainer]]


def configures(desired: Environment, observed: Mapping[str, ObservedHost]) -> list[Action]:
    """A ``Configure`` for each host whose router config lacks a backend or rule of the desired state."""
    out: list[Action] = []
    for host in sorted(observed):
        site = rt.site_for(desired, host) if host in {h.name for h in desired.hosts} else None
        view = observed[host].router
        if site is None or view is None or view.skeleton == router_config.skeleton_hash(site):
            continue
        why = "no config of ours" if view.skeleton is None else "its backends or rules changed"
        out.append(Route(host, "", f"write the router's config ({why}) with the live servers, and reload it",
                         route=router_steps.Configure(host, "")))
    return out


def _roles(env: str, seen: list[ObservedContainer]) -> tuple[ObservedContainer | None, ObservedContainer | None]:
    active = next((c for c in seen if c.role == managed.ROLE_ACTIVE), None)
    candidate = next((c for c in seen if c.role == managed.ROLE_CANDIDATE), None)
    return active, candidate


def _view(observed: Mapping[str, ObservedHost], host: str) -> rt.RouterView | None:
    obs = observed.get(host)
    return obs.router if obs is not None else None


def _may_serve(view: rt.RouterView | None, backend: str, container: ObservedContainer) -> bool:
    """Whether the router could send requests to this container's server."""
    if view is None or not container.config_hash:
        return False
    state = view.observed.get((backend, rt.server_name(backend, container.config_hash)))
    return state is not None and not state.maint and state.weight > 0


def _clear_candidate(desired: Environment, service: Service, host: str, candidate: ObservedContainer,
                     view: rt.RouterView | None) -> Action:
    if _may_serve(view, service.name, candidate):
        return Aside(host, service.name, "an interrupted run's candidate the router still routes to: kept "
                     "running under its retired name until it is drained", container=candidate.name)
    return Remove(host, service.name, "remove the candidate an interrupted deploy left behind", container=candidate.name)


def _reason(step: router_steps.RouterStep, service: Service) -> str:
    if isinstance(step, traffic.TrafficStep):
        return traffic.reason(step)
    check = rt.router_check(service.health)
    if isinstance(step, router_steps.AddServer):
        return f"add {step.server} with weight 0 and the router's {check.kind} check"
    if isinstance(step, router_steps.WaitUp):
        return f"wait until the router sees {step.server} UP ({check.rise} checks in a row, at most {step.deadline:g}s)"
    if isinstance(step, router_steps.Ready):
        return f"{step.server} out of drain, if it was"
    if isinstance(step, router_steps.SetWeights):
        return f"switch: every new request to {step.weights[0][0]}"
    if isinstance(step, router_steps.Drain):
        return f"drain {step.server}: no new request"
    if isinstance(step, router_steps.WaitDrained):
        return f"wait until {step.server} has no session (at most {step.deadline:g}s)"
    return f"take {step.server} out of the router"


def _cutover(service: Service, host: str, green: str, address: str, view: rt.RouterView | None,
             fallback_blue: ObservedContainer | None, *, fresh: bool = False) -> tuple[router_steps.RouterStep, ...]:
    """The full switch to ``green`` on ``host``: every other server of the backend is taken out."""
    exposure = rt.exposure_of(service)
    if view is not None:
        others = tuple(s.name for s in view.backend(service.name) if s.name != green)
    else:  # not observed: the serving container's server is the blue to take out
        others = (rt.server_name(service.name, fallback_blue.config_hash),) \
            if fallback_blue is not None and fallback_blue.config_hash else ()
    return router_steps.cutover_steps(host, service.name, green=rt.Server(green, address, exposure.port), others=others,
                            check=exposure.check, up_deadline=service.health.allowed,
                            drain_deadline=service.expose.drain, ready=not fresh, sticky=exposure.sticky is not None)


def _routes(service: Service, host: str, steps: tuple[router_steps.RouterStep, ...], full: int, container: str,
            batch: int) -> list[tuple[int, Action]]:
    """Route actions positioned by their index in the full sequence (``full`` steps long)."""
    first = full - len(steps)
    return [(10 + first + i, Route(host, service.name, _reason(step, service), route=step, batch=batch,
                                   container=container if isinstance(step, (router_steps.AddServer, *traffic.ADDRESSED)) else "",
                                   persist=isinstance(step, (router_steps.Drain, traffic.StartMirror, traffic.StopMirror))
                                   or i == len(steps) - 1))
            for i, step in enumerate(steps)]


def _interleave(per_host: list[list[tuple[int, Action]]]) -> list[Action]:
    merged = [(position, n, i, action) for n, items in enumerate(per_host) for i, (position, action) in enumerate(items)]
    return [action for *_, action in sorted(merged, key=lambda m: m[:3])]


def deploy_batch(desired: Environment, service: Service, batch: tuple[str, ...], index: int, pairs: Pairs,
                 observed: Mapping[str, ObservedHost]) -> list[Action]:
    """Green started (or adopted), switched to, blue taken out and retired, on every host of the batch."""
    env = desired.name
    release = managed.config_hash(service)
    green = rt.server_name(service.name, release)
    candidate_name = managed.container_name(env, service.name, managed.ROLE_CANDIDATE)
    per_host = []
    for host in batch:
        active, candidate = _roles(env, pairs.get((host, service.name), []))
        view = _view(observed, host)
        known = view is not None and (service.name, green) in view.observed
        items: list[tuple[int, Action]] = []
        address = ""
        if candidate is not None and candidate.config_hash == release and known:
            # A run died mid-switch: the router already knows this candidate.
            items.append((0, Adopt(host, service.name, "the interrupted switch's candidate: continue it",
                                   container=candidate.name, batch=index)))
            # Its address is the router's while it runs; restarted, it may have another one.
            address = view.observed[(service.name, green)].address if candidate.running else ""
        else:
            if candidate is not None:
                items.append((0, _clear_candidate(desired, service, host, candidate, view)))
            items.append((1, Start(host, service.name, f"run {service.image} beside the serving version",
                                   batch=index, beside=True)))
            if service.health.kind not in ROUTER_CHECKED:
                items.append((2, CheckHealth(host, service.name, f"{service.health.kind} check on the engine",
                                             batch=index, beside=True)))
        adopted = bool(items) and isinstance(items[0][1], Adopt)
        # A server this run adds anew was never drained: no Ready for it.
        fresh = not adopted and view is not None and (service.name, green) not in view.observed
        full = _cutover(service, host, green, address, view, active, fresh=fresh)
        if active is not None:  # copies of live requests to green before the switch (core.traffic)
            full = traffic.with_mirror(full, service.expose.mirror)
        steps = traffic.resume(full, view) if address and view is not None else full
        items += _routes(service, host, steps, len(full), candidate_name, index)
        from reconciler.core import canary  # it imports this module

        blue = canary.standbys(desired, service, [host], pairs).get(host)
        if blue is not None:  # a watch follows: blue stays running, the router's backup server
            items += [(p, dataclasses.replace(a, batch=index)) for p, a in canary.standby_steps(service, host, blue, active.name)]
        items.append((_SWITCH_AT, Switch(host, service.name, "switched: keep the old version running until the watch "
                                         "ends" if blue else "switched: stop the old version and keep it for a rollback",
                                         batch=index, keep=blue is not None)))
        per_host.append(items)
    return _interleave(per_host)


def settle(desired: Environment, service: Service, pairs: Pairs, observed: Mapping[str, ObservedHost],
           deploying: list[str]) -> list[Action]:
    """For hosts already running the desired release: the router made to route to it, leftovers cleared."""
    env = desired.name
    green = rt.server_name(service.name, managed.config_hash(service))
    per_host = []
    for host in service.hosts:
        if host in deploying:
            continue
        active, candidate = _roles(env, pairs.get((host, service.name), []))
        view = _view(observed, host)
        items: list[tuple[int, Action]] = []
        if candidate is not None:
            # One the router may still send requests to goes once the switch
            # to the active container took its requests away.
            serving = _may_serve(view, service.name, candidate)
            items.append((_SWITCH_AT if serving else 0, Remove(host, service.name, "remove the candidate an "
                                                               "interrupted deploy left behind", container=candidate.name)))
        if view is not None and active is not None and active.running:
            state = view.observed.get((service.name, green))
            routed = state is not None and state.weight == rt.FULL_WEIGHT and not state.maint and not state.drain
            full = _cutover(service, host, green, state.address if state is not None else "", view, None)
            if routed:
                # Only other servers to take out, from the switch on: an unhealthy
                # active container is the health check's business, never a
                # reason to add or re-check its server.
                steps = router_steps.resume(full[3:], view.observed)
            elif state is None or state.maint:
                steps = full  # (re-)added: a server in maintenance is re-armed with fresh checks
            else:
                steps = router_steps.resume(full, view.observed)
            items += _routes(service, host, steps, len(full), active.name, 0)
        per_host.append(items)
    return _interleave(per_host)


def rollback_hosts(desired: Environment, service: Service, targets: Mapping[str, str], pairs: Pairs,
                   observed: Mapping[str, ObservedHost]) -> list[Action]:
    """The switch back to each host's retained container (``targets``: host -> its name), all hosts at once."""
    env = desired.name
    candidate_name = managed.container_name(env, service.name, managed.ROLE_CANDIDATE)
    per_host = []
    for host, name in sorted(targets.items()):
        seen = pairs.get((host, service.name), [])
        active, candidate = _roles(env, seen)
        target = next(c for c in seen if c.name == name)
        view = _view(observed, host)
        items: list[tuple[int, Action]] = []
        if candidate is not None:
            items.append((0, _clear_candidate(desired, service, host, candidate, view)))
        items.append((1, Revive(host, service.name, f"start the retained {target.image} "
                                f"(rev {str(target.revision)[:12]}) beside the serving version", container=name)))
        back = rt.server_name(service.name, target.config_hash or target.id)
        fresh = view is not None and (service.name, back) not in view.observed
        full = _cutover(service, host, back, "", view, active, fresh=fresh)
        items += _routes(service, host, full, len(full), candidate_name, 0)
        items.append((_SWITCH_AT, Switch(host, service.name, "switched back: stop the rolled-back version and keep it")))
        per_host.append(items)
    return _interleave(per_host)
