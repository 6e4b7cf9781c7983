"""A canary whose run died, continued by the next run: from the weight the router has, never lower.

On in-memory hosts and routers (``routerfakes``), as ``test_canary``; the
dead run's journal is what its executor reported (the ``canary-pause`` events).
"""

from __future__ import annotations

import pytest

from reconciler.core import canary, canary_resume
from reconciler.core import router as rt
from reconciler.core import router_steps
from routerfakes import Killed
from test_canary import backend, environment, HOSTS, on, server, V1, V2, web, world  # noqa: F401  (world: the canary's fixture)


def _run_until_killed(world, host: str, weight: int, after: float) -> list[dict]:
    """Deploy V2 and die on ``host`` ``after`` seconds into its pause at ``weight``; the dead run's journal."""
    records: list[dict] = []
    green = server(V2)
    seen: dict[str, float] = {}

    def journal(event, **fields):
        records.append({"event": event, "at": world.clock(), **fields})

    def traffic(router):
        s = router.servers_.get(("web", green))
        if s is not None and s.weight == weight:
            seen.setdefault("at", world.clock())
            if world.clock() - seen["at"] >= after:
                raise Killed(f"killed {after}s into the pause at {weight}% on {host}")

    world.routers[host].traffic = traffic
    env = environment(web(V2))
    with pytest.raises(Killed):
        world.executor(env, "r2", observers=(journal,), wall=world.clock).apply(world.plan(env, "r2"))
    world.routers[host].traffic = None
    return records


def test_a_canary_killed_at_50_percent_goes_on_from_50_never_back_to_10(world):
    world.executor(environment(web(V1)), "r1").apply(world.plan(environment(web(V1)), "r1"))
    records = _run_until_killed(world, "h2", 50, after=2.0)
    assert backend(world, "h2")[server(V2)] == 50
    env = environment(web(V2))
    plan = world.plan(env, "r2")
    weights = [a.route.weights[0][1] for a in plan.actions
               if a.host == "h2" and a.step == "SetWeights" and a.route.backend == "web"]
    assert weights and min(weights) >= 50, weights  # never a step back
    assert [a.weight for a in plan.actions if a.host == "h2" and a.step == "Observe"] == [50], on(plan, "h2")
    for r in world.routers.values():
        r.weights_seen.clear()
    outcome = world.executor(env, "r2", wall=world.clock).apply(canary_resume.resumed_pauses(plan, records))
    assert outcome.result == "deployed", outcome.failure
    seen = [w[("web", server(V2))] for w in world.routers["h2"].weights_seen if ("web", server(V2)) in w]
    assert seen and min(seen) >= 50, seen
    for h in HOSTS:
        assert backend(world, h) == {server(V2): 100}, h
    assert world.violations == []


def test_the_pause_spent_before_the_kill_counts(world):
    world.executor(environment(web(V1)), "r1").apply(world.plan(environment(web(V1)), "r1"))
    records = _run_until_killed(world, "h2", 50, after=3.0)  # 3 s of the 5 s pause held
    env = environment(web(V2))
    plan = canary_resume.resumed_pauses(world.plan(env, "r2"), records)
    pause = next(a for a in plan.actions if a.host == "h2" and a.step == "Observe")
    began = next(r["since"] for r in records if r["event"] == "canary-pause" and r["host"] == "h2" and r["weight"] == 50)
    assert pause.since == began and "what is left" in pause.reason
    held = []

    def traffic(router):
        if router.servers_.get(("web", server(V2))) is not None and router.servers_[("web", server(V2))].weight == 50:
            held.append(world.clock())

    world.routers["h2"].traffic = traffic
    outcome = world.executor(env, "r2", wall=world.clock).apply(plan)
    assert outcome.result == "deployed", outcome.failure
    # What was left of the pause: about 2 s, not a whole 5 s again.
    assert held and max(held) - min(held) <= 2.5, (min(held), max(held))


def test_a_canary_killed_after_its_switch_to_100_never_goes_back_to_a_step(world):
    world.executor(environment(web(V1)), "r1").apply(world.plan(environment(web(V1)), "r1"))
    world.routers["h1"].kill_at = ("Drain", 1)  # green at 100 %, blue not yet drained
    env = environment(web(V2))
    with pytest.raises(Killed):
        world.executor(env, "r2").apply(world.plan(env, "r2"))
    world.routers["h1"].kill_at = None
    plan = world.plan(env, "r2")
    h1 = [a for a in plan.actions if a.host == "h1"]
    assert not [a for a in h1 if a.step == "Observe"], on(plan)
    assert [a.route.weights for a in h1 if a.step == "SetWeights" and a.route.backend == "web"] in ([], [
        ((server(V2), 100), (server(V1), 0))])
    outcome = world.executor(env, "r2").apply(plan)
    assert outcome.result == "deployed", outcome.failure
    assert backend(world, "h1") == {server(V2): 100}


def test_the_resume_keeps_the_steps_at_and_above_the_observed_weight():
    green, blue = "web-g", "web-b"
    steps = (router_steps.AddServer("h", "web", green, "10.0.0.9", 8080), router_steps.WaitUp("h", "web", green),
             canary.Pause("h", "web", green, 0),
             router_steps.SetWeights("h", "web", ((green, 10), (blue, 90))), canary.Pause("h", "web", green, 10),
             router_steps.SetWeights("h", "web", ((green, 50), (blue, 50))), canary.Pause("h", "web", green, 50),
             router_steps.SetWeights("h", "web", ((green, 100), (blue, 0))), router_steps.Drain("h", "web", blue))
    observed = {("web", green): rt.ServerState("web", green, "10.0.0.9", 8080, 50, 0, True),
                ("web", blue): rt.ServerState("web", blue, "10.0.0.8", 8080, 50, 0, True)}
    assert canary_resume.resume(steps, observed, "web", green) == steps[6:]  # the pause at 50, then on
    observed[("web", green)] = rt.ServerState("web", green, "10.0.0.9", 8080, 50, 0, False)  # DOWN since
    assert canary_resume.resume(steps, observed, "web", green) == (steps[1], *steps[5:])  # wait UP, at 50 again
