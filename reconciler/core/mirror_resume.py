"""A mirror window a dead run began, continued for what is left of it.  Pure.

The router's map shows that a mirror runs (``core.traffic``), not since
when: a run killed while mirroring would otherwise be resumed with a whole
``expose.mirror.for`` again.  The executor reports a ``mirror`` event when
it starts mirroring to a green and again when it waits (``since``: the
wall time the window began, carried over by a resumed wait), which the
journal keeps; ``resumed_mirrors`` gives the resumed plan's waits that
start, so a run killed twice still ends the window where the first began
it.  Like the watch after the switch (``core.canary.resumed_watches``).

A window is matched to the wait by host, backend, green's server name and
its address: a wait for another green (another release, or a green
started again elsewhere) is a new window.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from reconciler.core import traffic
from reconciler.core.plan import Plan
from reconciler.core.plan_steps import Route

EVENT = "mirror"


def _key(host: str, backend: str, server: str, target: str) -> tuple[str, str, str, str]:
    return host, backend, server, target


def event_fields(host: str, backend: str, server: str, address: str, port: int, since: float, seconds: float) -> dict:
    """The fields of the ``mirror`` event the executor reports (the journal keeps them)."""
    return dict(host=host, service=backend, server=server, target=f"{address}:{port}", since=since,
                until=since + seconds)


def windows(records: Iterable[dict]) -> dict[tuple[str, str, str, str], float]:
    """(host, backend, server, target) -> when its mirror window began, from a run's journal records."""
    began: dict[tuple[str, str, str, str], float] = {}
    for r in records:
        if r.get("event") == EVENT and isinstance(r.get("since"), (int, float)) and not isinstance(r.get("since"), bool):
            key = _key(str(r.get("host")), str(r.get("service")), str(r.get("server")), str(r.get("target")))
            began[key] = min(float(r["since"]), began.get(key, float(r["since"])))
    return began


def resumed_mirrors(plan: Plan, records: Iterable[dict]) -> Plan:
    """``plan`` with each ``WaitMirror`` of a window the dead run (its journal ``records``) began
    set to end where that window ends (``since``)."""
    began = windows(records)
    if not began:
        return plan
    actions = []
    for action in plan.actions:
        step = action.route if isinstance(action, Route) else None
        if isinstance(step, traffic.WaitMirror) and step.address and not step.since:
            since = began.get(_key(step.host, step.backend, step.server, f"{step.address}:{step.port}"))
            if since is not None:
                step = dataclasses.replace(step, since=since)
                action = dataclasses.replace(action, route=step, reason=traffic.reason(step))
        actions.append(action)
    return dataclasses.replace(plan, actions=tuple(actions))
