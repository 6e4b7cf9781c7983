"""After an abort no request reaches the aborted release, not even a sticky client's.

HAProxy's ``drain`` state (and a weight of 0) still honour persistence: a
client holding the release's cookie keeps reaching it until the drain
ends.  Only ``maint`` refuses persistent traffic too ("disables any
traffic to the server", HAProxy 2.6 management guide, ``set server ..
state``), and it does not cut the sessions in flight.  On in-memory hosts
and routers (``routerfakes``); a sticky client reaches a server while it is
in the router, UP and not in maintenance, whatever its weight or drain.
"""

from __future__ import annotations


from reconciler.core import router as rt
from reconciler.core import switch_back
from test_canary import backend, environment, HOSTS, server, V1, V2, web, world  # noqa: F401  (world: the canary's fixture)


def _sticky_reach(router, backend_name: str, name: str) -> bool:
    s = router.servers_.get((backend_name, name))
    return s is not None and s.up and not s.maint


def _trace(world, events):
    """Per host: (step, backend, server, green reachable by its cookie after it, rolling back) for every router step."""
    green = server(V2)
    traces = {h: [] for h in HOSTS}
    for host, router in world.routers.items():
        apply = router.apply

        def traced(step, *, persist=True, router=router, host=host, apply=apply):
            result = apply(step, persist=persist)
            traces[host].append((step.step, step.backend, getattr(step, "server", ""),
                                 _sticky_reach(router, "web", green), any(e == "rollback" for e, _ in events)))
            return result

        router.apply = traced
    return traces


def test_an_aborted_canary_is_in_maintenance_at_once_so_its_cookie_reaches_blue(world):
    world.executor(environment(web(V1)), "r1").apply(world.plan(environment(web(V1)), "r1"))
    green = server(V2)

    def traffic(router):  # green answers one request in five with a 500 once it has public weight
        s = router.servers_.get(("web", green))
        if s is not None and s.weight > 0 and not s.maint:
            s.total, s.errors = s.total + 5, s.errors + 1

    world.routers["h2"].traffic = traffic
    events: list = []
    traces = _trace(world, events)
    env = environment(web(V2))
    outcome = world.executor(env, "r2", observers=(lambda e, **f: events.append((e, f)),)).apply(world.plan(env, "r2"))
    assert outcome.result == "rolled-back" and "canary at 10%" in outcome.failure, outcome.failure
    for h in HOSTS:
        back = [t for t in traces[h] if t[4]]
        web_steps = [t[:3] for t in back if t[1] == "web"]
        # The first thing the switch back does to the public backend: green in maintenance (blue
        # already serves, weight 90), so not one more request reaches it, cookie or not.
        assert web_steps[0] == ("Maint", "web", green), (h, web_steps)
        assert not [t for t in back if t[0] != "Maint" and t[3]], (h, back)  # never reachable after that
        assert ("Drain", "web", green) not in web_steps and ("Ready", "web", green) not in web_steps, h
        # Its sessions in flight end before it is deleted, and the container stops after.
        assert web_steps.index(("WaitDrained", "web", green)) < web_steps.index(("DelServer", "web", green)), web_steps
        assert backend(world, h) == {server(V1): 100}, h
        maint = [f for e, f in events if e == "aborted" and f["host"] == h]
        assert maint and maint[0]["server"] == green, (h, maint)
    assert world.violations == []


def test_the_watch_after_the_switch_puts_the_failing_release_in_maintenance_behind_the_standby(world):
    world.executor(environment(web(V1, strategy="auto", watch=30.0)), "r1").apply(
        world.plan(environment(web(V1, strategy="auto", watch=30.0)), "r1"))
    green = server(V2)
    start = {}

    def traffic(router):
        s = router.servers_.get(("web", green))
        if s is None or s.weight < 100:
            return
        start.setdefault(router.host.name, world.clock())
        if world.clock() - start[router.host.name] > 3:  # 5xx a few seconds after its switch
            s.total, s.errors = s.total + 10, s.errors + 5

    world.routers["h1"].traffic = traffic
    events: list = []
    traces = _trace(world, events)
    env = environment(web(V2, strategy="auto", watch=30.0))
    outcome = world.executor(env, "r2", observers=(lambda e, **f: events.append((e, f)),)).apply(world.plan(env, "r2"))
    assert outcome.result == "rolled-back" and "watch after the switch" in outcome.failure, outcome.failure
    for h in HOSTS:
        back = [t for t in traces[h] if t[4] and t[1] == "web"]
        # The standby (blue as a backup server) is UP: green goes to maintenance first, the
        # standby takes every request while blue is added back.
        assert back[0][:3] == ("Maint", "web", green), (h, back)
        assert not [t for t in back[1:] if t[3]], (h, back)
        assert backend(world, h) == {server(V1): 100}, h
    assert world.violations == []


def test_the_switch_back_steps_put_the_release_in_maintenance_first_when_another_server_serves():
    check = rt.RouterCheck()
    blue = rt.Server("web-b", "10.0.0.8", 8080)
    serving = {("web", "web-b"): rt.ServerState("web", "web-b", "10.0.0.8", 8080, 90, 0, True),
               ("web", "web-g"): rt.ServerState("web", "web-g", "10.0.0.9", 8080, 10, 0, True)}
    steps = switch_back.steps("h", "web", retained=blue, failing="web-g", others=["web-g"], check=check,
                              up_deadline=10, drain_deadline=5, observed=serving)
    assert [(s.step, s.server if hasattr(s, "server") else "") for s in switch_back.resume(steps, serving)] == [
        ("Maint", "web-g"), ("SetWeights", ""), ("WaitDrained", "web-g"), ("DelServer", "web-g")]
    # Nothing else serves (a switch after which blue was taken out): blue first, then green out.
    alone = {("web", "web-g"): rt.ServerState("web", "web-g", "10.0.0.9", 8080, 100, 0, True)}
    steps = switch_back.steps("h", "web", retained=blue, failing="web-g", others=["web-g"], check=check,
                              up_deadline=10, drain_deadline=5, observed=alone)
    assert [s.step for s in steps] == ["AddServer", "WaitUp", "Ready", "SetWeights", "Maint", "WaitDrained", "DelServer"]
    # Any other old server is drained as before: it served well.
    steps = switch_back.steps("h", "web", retained=blue, failing="web-g", others=["web-g", "web-x"], check=check,
                              up_deadline=10, drain_deadline=5, observed=serving)
    assert [(s.step, getattr(s, "server", "")) for s in steps][-4:] == [
        ("Drain", "web-x"), ("WaitDrained", "web-x"), ("Maint", "web-x"), ("DelServer", "web-x")]
