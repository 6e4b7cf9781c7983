"""A canary continued after its run died: from the weight the router has, never lower.  Pure.

``core.router.resume`` continues a switch from the first step the router
does not show in effect.  For a canary that is wrong: a run killed while
holding 50 % sees the 10 % step "not in effect" (the weights are 50/50),
so it would set 10 % again before going on, and a run killed after the
switch to 100 % would go back through every step.  ``resume`` drops the
weight steps (and their pauses) below green's observed weight first, then
continues from the first step not in effect: green's share never goes
down, and the step it holds is observed again.

The pause the dead run spent at that weight counts: the executor reports
a ``canary-pause`` event (host, service, server, weight, since) when it begins to
hold a step, the journal keeps it, and ``resumed_pauses`` gives the next
run's ``Observe`` at that weight the recorded start, so it holds only what
is left (as ``core.canary.resumed_watches`` does for the watch).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from reconciler.core import canary
from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core.plan import Plan


def observed_weight(observed: rt.Observed, backend: str, green: str) -> int:
    """Green's weight in ``backend`` as the router has it (0 when it is absent or in maintenance)."""
    state = observed.get((backend, green))
    return state.weight if state is not None and not state.maint else 0


def _below(step: router_steps.RouterStep, backend: str, green: str, weight: int) -> bool:
    """A canary step that would give ``green`` less than ``weight`` of ``backend``, or hold it there."""
    if isinstance(step, canary.Pause):
        return step.backend == backend and step.server == green and step.weight < weight
    if isinstance(step, router_steps.SetWeights) and step.backend == backend:
        share = dict(step.weights).get(green)
        return share is not None and share < weight
    return False


def resume(steps: Sequence[router_steps.RouterStep], observed: rt.Observed, backend: str, green: str) -> tuple[router_steps.RouterStep, ...]:
    """The canary ``steps`` left, from green's observed weight on: never a step back."""
    weight = observed_weight(observed, backend, green)
    return router_steps.resume([s for s in steps if not _below(s, backend, green, weight)], observed)


def resumed_pauses(plan: Plan, records: Iterable[dict]) -> Plan:
    """``plan`` with each ``Observe`` a dead run (its journal ``records``) had begun held for what is left.

    An Observe of the same host, service, server and weight gets the
    earliest recorded start of that pause; the executor holds it until
    ``since + seconds`` (checking the router at least once).
    """
    began: dict[tuple, float] = {}
    for r in records:
        if r.get("event") == "canary-pause" and isinstance(r.get("since"), (int, float)):
            key = (r.get("host"), r.get("service"), r.get("server"), r.get("weight"))
            began[key] = min(began.get(key, float(r["since"])), float(r["since"]))
    if not began:
        return plan
    actions = []
    for action in plan.actions:
        key = (action.host, action.service, getattr(action, "server", None), getattr(action, "weight", None))
        if isinstance(action, canary.Observe) and not action.since and key in began:
            action = dataclasses.replace(action, since=began[key],
                                         reason=f"{action.reason} (what is left of the pause an interrupted run began)")
        actions.append(action)
    return dataclasses.replace(plan, actions=tuple(actions))
