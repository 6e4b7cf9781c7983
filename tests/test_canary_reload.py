"""A canary whose router is reloaded in the middle: its errors still count.

A reloaded HAProxy's new worker starts every counter at 0 (weights and
check states come back from the config and the server-state file; the
fleet test ``test_canary_fleet`` reloads every router mid-canary).  The
abort rule counts green's errors since it was added: errors seen before a
reload must not be forgotten after it.  On in-memory hosts and routers.
"""

from __future__ import annotations

from dataclasses import replace


from test_canary import backend, CANARY, environment, HOSTS, server, V1, V2, web, world  # noqa: F401  (world: the canary's fixture)


def test_errors_before_a_reload_of_the_router_still_count_after_it(world):
    # Abort on more than 3 errors; green makes 2 at 10 %, the router is reloaded, then 2 more.
    slow = replace(CANARY, pause=20.0)
    world.executor(environment(web(V1, canary_=slow)), "r1").apply(world.plan(environment(web(V1, canary_=slow)), "r1"))
    green = server(V2)
    seen = {"readings": 0, "reloaded": False}

    def traffic(router):
        s = router.servers_.get(("web", green))
        if s is None or s.weight != 10:
            return
        seen["readings"] += 1
        if seen["readings"] in (2, 3):
            s.total, s.errors = s.total + 20, s.errors + 1
        elif seen["readings"] == 5:  # a reload: the new worker's counters start at 0
            s.total, s.errors, seen["reloaded"] = 4, 0, True
        elif seen["readings"] in (7, 8):
            s.total, s.errors = s.total + 20, s.errors + 1

    world.routers["h1"].traffic = traffic
    env = environment(web(V2, canary_=slow, max_errors=3, max_error_rate=None))
    outcome = world.executor(env, "r2").apply(world.plan(env, "r2"))
    assert seen["reloaded"]
    assert outcome.result == "rolled-back" and "canary at 10%" in outcome.failure, outcome.failure
    assert "4 errors" in outcome.failure, outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V1): 100}, h


def test_a_count_carried_over_a_reset_is_per_backend():
    from reconciler.core import router as rt
    from reconciler.engine.watching import WatchedSteps

    def state(backend, errors, total):
        return {(backend, "g"): rt.ServerState(backend, "g", "10.0.0.9", 8080, 10, 0, True, errors=errors, total=total)}

    steps = WatchedSteps()
    both = ["web", "web.qa"]
    assert steps._since_added("h1", "g", {**state("web", 2, 40), **state("web.qa", 1, 10)}, both) == (3, 50)
    # The router reloaded: both backends count from 0 again; what they had counted is kept.
    assert steps._since_added("h1", "g", {**state("web", 0, 3), **state("web.qa", 0, 1)}, both) == (3, 54)
    # Green taken out of the QA backend (after its switch): its QA counts stay, the public ones are not doubled.
    assert steps._since_added("h1", "g", state("web", 1, 9), both) == (4, 60)
