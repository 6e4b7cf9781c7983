"""The switch back of a failed deploy: no request reaches the failed release after it.  Pure.

``core.router.cutover_steps`` takes old servers out by draining them: right
for a release that served well (a blue after its switch), wrong for the
one a rollback turns away from.  HAProxy's ``drain`` (like a weight of 0)
"only removes the server from load balancing but still allows it to be
checked and to accept new persistent connections" (HAProxy 2.6 management
guide, ``set server .. state``): with a canary's sticky cookie, a client
that got the failing release kept reaching it until the drain ended.
``maint`` "disables any traffic to the server", persistent traffic too,
and does not cut the sessions in flight.

So the failed release (``failing``) goes to maintenance, then waits for its
sessions in flight (``WaitDrained`` counts them in maintenance too), then
is deleted; the caller stops its container after.  It goes to maintenance
*first*, before the retained server is even checked, when another server
of the backend already takes requests (an aborted canary's blue at 90 %,
the watch's standby): the first router command after an abort refuses it
every request.  Otherwise (nothing else serves) right after the weights
move to the retained server.  Any other old server is drained as before.
"""

from __future__ import annotations

from typing import Sequence

from reconciler.core import router as rt
from reconciler.core import router_steps


def serves(observed: rt.Observed, backend: str, name: str) -> bool:
    """Whether the router would send ``name`` new requests: UP, weighted, neither draining nor in maintenance."""
    state = observed.get((backend, name))
    return state is not None and state.up and state.weight > 0 and not state.drain


def steps(host: str, backend: str, *, retained: rt.Server, failing: str | None, others: Sequence[str],
          check: rt.RouterCheck, up_deadline: float, drain_deadline: float, observed: rt.Observed,
          sticky: bool = False) -> tuple[router_steps.RouterStep, ...]:
    """Every new request of ``backend`` to ``retained``; ``failing`` refused at once; ``others`` drained out."""
    others = tuple(o for o in others if o != retained.name)
    failing = failing if failing in others else None
    early = failing is not None and any(serves(observed, backend, s) for (b, s) in observed
                                        if b == backend and s != failing)
    out: list[router_steps.RouterStep] = [router_steps.Maint(host, backend, failing)] if early else []
    out += [router_steps.AddServer(host, backend, retained.name, retained.address, retained.port, check, sticky=sticky),
            router_steps.WaitUp(host, backend, retained.name, up_deadline),
            router_steps.Ready(host, backend, retained.name),
            router_steps.SetWeights(host, backend, ((retained.name, rt.FULL_WEIGHT), *((o, 0) for o in others)))]
    for other in others:
        if other == failing:
            out += [*(() if early else (router_steps.Maint(host, backend, other),)),
                    router_steps.WaitDrained(host, backend, other, drain_deadline), router_steps.DelServer(host, backend, other)]
        else:
            out += [router_steps.Drain(host, backend, other), router_steps.WaitDrained(host, backend, other, drain_deadline),
                    router_steps.Maint(host, backend, other), router_steps.DelServer(host, backend, other)]
    return tuple(out)


def resume(steps: Sequence[router_steps.RouterStep], observed: rt.Observed) -> tuple[router_steps.RouterStep, ...]:
    """The ``steps`` left, as ``core.router.resume``, but a first ``Maint`` (the failing release refused
    before the switch back) on its own: done or not, it must not make the switch back replay in full."""
    if len(steps) > 1 and isinstance(steps[0], router_steps.Maint) and isinstance(steps[1], router_steps.AddServer):
        head = () if router_steps.in_effect(steps[0], observed) else (steps[0],)
        return (*head, *router_steps.resume(steps[1:], observed))
    return router_steps.resume(steps, observed)
