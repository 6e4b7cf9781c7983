"""Canary rollouts and the watch after the switch, as plan steps.  Pure.

A **canary** (``rollout.strategy: canary``) deploys every host of a service
at once: green starts beside blue on each host and is added to the router
with weight 0 and the service's check (``core.router``, as for blue-green);
with QA routing (``rollout.qa``) it is also the only server of the
service's QA backend, so requests with the QA header or cookie reach it
before any public traffic.  Then, per step of ``rollout.steps``, one
``SetWeights`` gives green that share of new requests on every host, and an
``Observe`` holds it for ``rollout.pause``, failing the deploy (so every
host switches back to blue, the rollback path) when the router sees green
DOWN or its error counters break the abort rule.  The last step (100) is
the blue-green tail: blue drained and taken out, green out of the QA
backend, ``Switch``.  With a sticky cookie a client keeps the server it got
(HAProxy's dynamic cookie, the one kind runtime-added servers take in 2.6).

The **watch** (``rollout.watch``): after the service's last switch, one
``Watch`` per host keeps checking the same (green UP, errors within the
rule) for the window; a failure rolls every host back like any failed
check.  During the watch blue keeps running, as the router's *standby*: a
backup server (``<blue>-standby``), which HAProxy sends requests to only
while no other server is UP, so a green that goes DOWN is replaced at once,
before the switch back.  After the watch the standby is taken out and blue
stops (``Release``).  The executor reports when a watch began (``watch``
records in the journal), and a run that died mid-watch is continued for
what is left of the window (``resumed_watches``), never skipped.

A run killed mid-canary continues from the weight the router has, never
lower (``core.canary_resume``): the steps below green's observed weight are
dropped, the rest resume from the first not in effect, and the pause the
dead run had begun at that weight holds only what is left of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping

from reconciler.core import bluegreen, managed, model
from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core.model import Environment, Service
from reconciler.core.managed import ObservedHost
from reconciler.core.plan import Plan
from reconciler.core.plan_steps import Action, Adopt, CheckHealth, Route, Start, Switch

_SWITCH_AT = 1000


@dataclass(frozen=True)
class Pause(router_steps.RouterStep):
    """In a router sequence: hold the canary at ``weight`` (never "in effect": a resumed run observes it again,
    for what is left of it)."""

    server: str = ""
    weight: int = 0


@dataclass(frozen=True)
class Observe(CheckHealth):
    """Hold a canary step ``seconds`` (from ``since``, a wall-clock time a dead run began it; 0: from
    when the step begins): fails when the router sees ``server`` DOWN or its errors break the rule.

    A CheckHealth, so its failure rolls the deploy back on every host."""

    server: str = ""
    weight: int = 0
    seconds: float = 0.0
    since: float = 0.0
    max_errors: int | None = None
    max_error_rate: float | None = None


@dataclass(frozen=True)
class Watch(CheckHealth):
    """After the last switch: the same checks for ``seconds`` from ``since``
    (a wall-clock time; 0: from when the step begins)."""

    server: str = ""
    seconds: float = 0.0
    since: float = 0.0
    max_errors: int | None = None
    max_error_rate: float | None = None


@dataclass(frozen=True)
class Release(Action):
    """The watch is over: the retained blue kept running as the standby stops."""


def standby_name(server: str) -> str:
    return f"{server}-standby"


def standbys(desired: Environment, service: Service, hosts: Iterable[str], pairs: bluegreen.Pairs) -> dict[str, str]:
    """host -> the blue server a watch keeps as standby there (hosts that have a blue to keep)."""
    if service.expose is None or service.rollout.watch <= 0:
        return {}
    want = managed.config_hash(service)
    out = {}
    for host in hosts:
        active, _ = bluegreen._roles(desired.name, pairs.get((host, service.name), []))
        if active is not None and active.config_hash and active.config_hash != want:
            out[host] = rt.server_name(service.name, active.config_hash)
    return out


def standby_steps(service: Service, host: str, blue: str, container: str) -> list[tuple[int, Action]]:
    """Blue (``container``, the serving one) added as the router's backup server, before the Switch keeps it running."""
    exposure = rt.exposure_of(service)
    name = standby_name(blue)
    add = router_steps.AddServer(host, service.name, name, "", exposure.port, exposure.check,
                       sticky=exposure.sticky is not None, backup=True)
    return [(900, Route(host, service.name, f"keep {blue} running as the router's standby (a backup server) "
                                            "during the watch", route=add, container=container)),
            (901, Route(host, service.name, f"wait until the router sees the standby {name} UP",
                        route=router_steps.WaitUp(host, service.name, name, service.health.allowed))),
            (902, Route(host, service.name, f"the standby {name} takes requests if no other server is UP",
                        route=router_steps.SetWeights(host, service.name, ((name, rt.FULL_WEIGHT),)), persist=True))]


def broken(max_errors: int | None, max_error_rate: float | None, errors: int, requests: int) -> str | None:
    """Why ``errors`` among ``requests`` break the rule; None when they do not."""
    if max_errors is not None and errors > max_errors:
        return f"{errors} errors in {requests} requests, more than {max_errors}"
    if max_error_rate is not None and errors > 0 and errors > max_error_rate * max(requests, 1):
        return f"{errors} errors in {requests} requests, more than {max_error_rate * 100:g}%"
    return None


def counts(servers: Mapping[tuple[str, str], rt.ServerState], backends: Iterable[str], server: str) -> tuple[int, int]:
    """(errors, requests) of ``server`` over ``backends`` as the router counts them (since it was added)."""
    states = [servers[(b, server)] for b in backends if (b, server) in servers]
    return sum(s.errors for s in states), sum(s.total for s in states)


# ---------------------------------------------------------------- the canary's plan


def sequence(service: Service, host: str, green: rt.Server, others: tuple[str, ...], qa_others: tuple[str, ...],
             *, fresh: bool) -> tuple[router_steps.RouterStep, ...]:
    """Every router step (and ``Pause``) of ``service``'s canary on ``host``."""
    exposure = rt.exposure_of(service)
    canary = service.rollout.canary
    name, up, drain = service.name, service.health.allowed, service.expose.drain
    sticky = exposure.sticky is not None
    others = tuple(o for o in others if o != green.name)
    steps: list[router_steps.RouterStep] = [
        router_steps.AddServer(host, name, green.name, green.address, green.port, exposure.check, sticky=sticky),
        router_steps.WaitUp(host, name, green.name, up),
        *(() if fresh else (router_steps.Ready(host, name, green.name),)),
    ]
    qa = exposure.qa_backend
    if qa:
        for other in qa_others:
            if other != green.name:
                steps += [router_steps.Maint(host, qa, other), router_steps.DelServer(host, qa, other)]
        steps += [router_steps.AddServer(host, qa, green.name, green.address, green.port, exposure.check),
                  router_steps.WaitUp(host, qa, green.name, up), router_steps.SetWeights(host, qa, ((green.name, rt.FULL_WEIGHT),))]
    if others:  # a first deploy has no traffic to share: straight to 100
        for share in canary.steps[:-1]:
            if share > 0:
                steps.append(router_steps.SetWeights(host, name, ((green.name, share),
                                                        *((o, rt.FULL_WEIGHT - share) for o in others))))
            steps.append(Pause(host, name, green.name, share))
    steps.append(router_steps.SetWeights(host, name, ((green.name, rt.FULL_WEIGHT), *((o, 0) for o in others))))
    for other in others:
        steps += [router_steps.Drain(host, name, other), router_steps.WaitDrained(host, name, other, drain),
                  router_steps.Maint(host, name, other), router_steps.DelServer(host, name, other)]
    if qa:
        steps += [router_steps.Maint(host, qa, green.name), router_steps.DelServer(host, qa, green.name)]
    return tuple(steps)


def _reason(step: router_steps.RouterStep, service: Service) -> str:
    qa = step.backend != service.name
    if isinstance(step, router_steps.SetWeights) and qa:
        return f"QA requests ({_qa_what(service)}) to {step.weights[0][0]}"
    if isinstance(step, router_steps.SetWeights) and step.weights[0][1] < rt.FULL_WEIGHT:
        return f"canary: {step.weights[0][1]}% of new requests to {step.weights[0][0]}"
    if isinstance(step, router_steps.AddServer) and qa:
        return f"add {step.server} to the QA backend {step.backend}"
    if isinstance(step, (router_steps.Maint, router_steps.DelServer)) and qa:
        return f"take {step.server} out of the QA backend"
    return bluegreen._reason(step, service)


def _qa_what(service: Service) -> str:
    canary = service.rollout.canary
    return " or ".join(x for x in (canary.qa_header and f"header {canary.qa_header}",
                                   canary.qa_cookie and f"cookie {canary.qa_cookie}") if x)


def _actions(service: Service, host: str, steps: tuple[router_steps.RouterStep, ...], full: int, container: str) -> list:
    rollout = service.rollout
    first = full - len(steps)
    out: list[tuple[int, Action]] = []
    for i, step in enumerate(steps):
        if isinstance(step, Pause):
            what = f"QA requests only ({_qa_what(service)})" if step.weight == 0 else f"{step.weight}% of new requests"
            action: Action = Observe(host, service.name, f"hold {what} on {step.server} for "
                                     f"{rollout.canary.pause:g}s; abort on {_rule(rollout)} or its check failing",
                                     server=step.server, weight=step.weight, seconds=rollout.canary.pause,
                                     max_errors=rollout.max_errors, max_error_rate=rollout.max_error_rate)
        else:
            action = Route(host, service.name, _reason(step, service), route=step,
                           container=container if isinstance(step, router_steps.AddServer) else "",
                           persist=isinstance(step, (router_steps.Drain, router_steps.SetWeights)) or i == len(steps) - 1)
        out.append((10 + first + i, action))
    return out


def _rule(rollout: model.Rollout) -> str:
    if rollout.max_errors is not None:
        return f"more than {rollout.max_errors} errors"
    return f"errors above {(rollout.max_error_rate or 0) * 100:g}%"


def deploy(desired: Environment, service: Service, hosts: tuple[str, ...], pairs: bluegreen.Pairs,
           observed: Mapping[str, ObservedHost]) -> list[Action]:
    """The canary of ``service`` on ``hosts``, all at once, step by step."""
    from reconciler.core import canary_resume

    env = desired.name
    release = managed.config_hash(service)
    green = rt.server_name(service.name, release)
    candidate_name = managed.container_name(env, service.name, managed.ROLE_CANDIDATE)
    exposure = rt.exposure_of(service)
    per_host = []
    for host in hosts:
        active, candidate = bluegreen._roles(env, pairs.get((host, service.name), []))
        view = bluegreen._view(observed, host)
        known = view is not None and (service.name, green) in view.observed
        items: list[tuple[int, Action]] = []
        address = ""
        if candidate is not None and candidate.config_hash == release and known:
            items.append((0, Adopt(host, service.name, "the interrupted canary's candidate: continue it",
                                   container=candidate.name)))
            address = view.observed[(service.name, green)].address if candidate.running else ""
        else:
            if candidate is not None:
                items.append((0, bluegreen._clear_candidate(desired, service, host, candidate, view)))
            items.append((1, Start(host, service.name, f"run {service.image} beside the serving version", beside=True)))
            if service.health.kind not in bluegreen.ROUTER_CHECKED:
                items.append((2, CheckHealth(host, service.name, f"{service.health.kind} check on the engine",
                                             beside=True)))
        adopted = isinstance(items[0][1], Adopt)
        fresh = not adopted and view is not None and not known
        if view is not None:
            others = tuple(s.name for s in view.backend(service.name) if s.name != green)
            qa_others = tuple(s.name for s in view.backend(exposure.qa_backend)) if exposure.qa_backend else ()
        else:
            others = (rt.server_name(service.name, active.config_hash),) if active is not None and active.config_hash else ()
            qa_others = ()
        full = sequence(service, host, rt.Server(green, address, exposure.port), others, qa_others, fresh=fresh)
        steps = canary_resume.resume(full, view.observed, service.name, green) if address and view is not None else full
        items += _actions(service, host, steps, len(full), candidate_name)
        blue = standbys(desired, service, [host], pairs).get(host)
        if blue is not None:
            items += standby_steps(service, host, blue, active.name)
        items.append((_SWITCH_AT, Switch(host, service.name, "switched: keep the old version running until the watch "
                                         "ends" if blue else "switched: stop the old version and keep it for a rollback",
                                         keep=blue is not None)))
        per_host.append(items)
    return bluegreen._interleave(per_host)


# ---------------------------------------------------------------- the watch


def watches(service: Service, hosts: Iterable[str], since: Mapping[str, float] | None = None,
            standby: Mapping[str, str] | None = None) -> list[Action]:
    """A Watch per host of ``hosts`` after ``service``'s last switch (none without ``rollout.watch``),
    then each host's standby (``standby``: host -> blue server) taken out and stopped."""
    rollout = service.rollout
    if service.expose is None or rollout.watch <= 0:
        return []
    green = rt.server_name(service.name, managed.config_hash(service))
    hosts = list(hosts)
    out: list[Action] = []
    for host in hosts:
        start = (since or {}).get(host, 0.0)
        left = "" if not start else " (what is left of the window an interrupted run began)"
        out.append(Watch(host, service.name, f"watch {green} for {rollout.watch:g}s after the switch{left}: "
                                             f"switch every host back on {_rule(rollout)} or its check failing",
                         server=green, seconds=rollout.watch, since=start,
                         max_errors=rollout.max_errors, max_error_rate=rollout.max_error_rate))
    kept = [(h, standby_name(standby[h])) for h in hosts if h in (standby or {})]
    out += [Route(h, service.name, f"the watch is over: take the standby {name} out", route=router_steps.Maint(h, service.name, name))
            for h, name in kept]
    out += [Route(h, service.name, f"the watch is over: take the standby {name} out", route=router_steps.DelServer(h, service.name, name),
                  persist=True) for h, name in kept]
    out += [Release(h, service.name, "the watch is over: stop the retained old version") for h, _ in kept]
    return out


def resumed_watches(plan: Plan, environment: Environment, observed: Mapping[str, ObservedHost],
                    records: Iterable[dict]) -> Plan:
    """``plan`` with the watches an interrupted run (its journal ``records``) had not finished.

    A host whose switch was done, or whose watch began, and whose watch did
    not end, is watched again from the window's recorded start (a watch
    never begun starts now), while it still runs the release; its standby
    stays in the router until then (the plan's taking it out, as a server
    left over, is moved after the watch), and the retained blue stops after.
    Not when the plan deploys the service again: its own watch covers it.
    """
    records = list(records)
    done = {(r.get("host"), r.get("service")) for r in records if r.get("event") == "done" and r.get("step") == "Watch"}
    switched = {(r.get("host"), r.get("service")) for r in records if r.get("event") == "done" and r.get("step") == "Switch"}
    began: dict[tuple[str, str], float] = {}
    for r in records:
        if r.get("event") == "watch" and isinstance(r.get("since"), (int, float)):
            began.setdefault((r.get("host"), r.get("service")), float(r["since"]))
    deploying = {a.service for a in plan.actions if a.step in ("Start", "Adopt", "Revive", "Resume")}
    actions = list(plan.actions)
    added: list[Action] = []
    for service in environment.services:
        if service.name in deploying or service.expose is None or service.rollout.watch <= 0:
            continue
        want = managed.config_hash(service)
        hosts, standby = [], {}
        for host in service.hosts:
            pair = (host, service.name)
            if pair in done or not (pair in switched or pair in began):
                continue
            obs = observed.get(host, ObservedHost(host))
            active = next((c for c in obs.managed(environment.name)
                           if c.service == service.name and c.role == managed.ROLE_ACTIVE), None)
            if active is None or active.config_hash != want or not active.running:
                continue
            hosts.append(host)
            kept = [s.name for s in obs.router.backend(service.name) if s.name.endswith("-standby")] \
                if obs.router is not None else []
            if kept:
                standby[host] = kept[0][: -len("-standby")]
                actions = [a for a in actions if not _touches(a, host, service.name, kept[0])]
        added += watches(service, hosts, {h: began[(h, service.name)] for h in hosts if (h, service.name) in began},
                         standby)
        added += [Release(h, service.name, "the watch is over: stop the retained old version")
                  for h in hosts if h not in standby]
    if not added:
        return plan
    return dataclasses.replace(plan, actions=tuple(actions) + tuple(added))


def _touches(action: Action, host: str, service: str, server: str) -> bool:
    """Whether ``action`` is a router step of ``host``'s ``service`` backend that names ``server``."""
    if not isinstance(action, Route) or action.host != host or action.service != service:
        return False
    step = action.route
    return getattr(step, "server", "") == server or server in dict(getattr(step, "weights", ()))
