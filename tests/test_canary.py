"""Canary rollouts and the watch after the switch, planned and run on in-memory hosts and routers.

As in ``test_bluegreen``, every router change and container stop is checked
against what a request would see (``routerfakes``): a backend that served
always has a server for a new request, and that server's container runs
and passed its check.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fakes import image
from reconciler.core import canary, managed
from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core import router_config
from reconciler.core.model import Canary, Environment, Expose, HealthCheck, Host, Policy, RouterConfig, Rollout, Service
from reconciler.core.plan import Plan
from routerfakes import Killed, RoutedWorld

ENV = "prod"
HOSTS = ("h1", "h2", "h3")
V1 = image("registry.test/web", "v1")
V2 = image("registry.test/web", "v2")
CHECK = HealthCheck(kind="http", port=8080, path="/health", interval=0.5, successes=2, deadline=10.0)
CANARY = Canary(steps=(0, 10, 50, 100), pause=5.0, qa_header="X-Canary")


def web(img=V1, *, strategy="canary", canary_=CANARY, watch=0.0, **rule) -> Service:
    rollout = Rollout(strategy=strategy, canary=canary_ if strategy == "canary" else None, watch=watch, **rule)
    return Service("web", img, HOSTS, health=CHECK, expose=Expose(8080, ("web.test",), drain=5.0), rollout=rollout,
                   stop_timeout=2.0)


def environment(service: Service) -> Environment:
    return Environment(ENV, tuple(Host(h, f"10.0.0.{i}") for i, h in enumerate(HOSTS, 1)), (service,),
                       Policy(parallel_hosts=3), router=RouterConfig(config_file="/srv/{host}/haproxy.cfg"))


@pytest.fixture
def world() -> RoutedWorld:
    w = RoutedWorld(*HOSTS)
    for ref in (V1, V2):
        w.registry.publish(ref)
    yield w
    assert not w.concurrent_use


def server(img) -> str:
    return rt.server_name("web", managed.config_hash(web(img)))


def deploy(world, service, revision):
    env = environment(service)
    plan = world.plan(env, revision)
    return plan, world.executor(env, revision).apply(plan)


def backend(world, host, name="web") -> dict[str, int]:
    return {s: v.weight for (b, s), v in world.routers[host].servers_.items() if b == name}


def on(plan: Plan, host="h1") -> list[str]:
    return [a.step for a in plan.actions if a.host == host and a.step not in ("Pull", "Configure")]


def test_the_canary_plan_shifts_weight_step_by_step_on_every_host_at_once(world):
    deploy(world, web(V1), "r1")
    plan = world.plan(environment(web(V2)), "r2")
    assert on(plan) == ["Start", "AddServer", "WaitUp", "AddServer", "WaitUp", "SetWeights",  # QA backend: green only
                        "Observe",  # step 0: QA requests only
                        "SetWeights", "Observe", "SetWeights", "Observe",  # 10 %, 50 %
                        "SetWeights", "Drain", "WaitDrained", "Maint", "DelServer",  # 100 %: blue out
                        "Maint", "DelServer", "Switch"]  # green out of the QA backend
    weights = [a.route.weights for a in plan.actions if a.host == "h1" and a.step == "SetWeights"]
    assert weights == [((server(V2), 100),), ((server(V2), 10), (server(V1), 90)),
                       ((server(V2), 50), (server(V1), 50)), ((server(V2), 100), (server(V1), 0))]
    assert [a.route.backend for a in plan.actions if a.host == "h1" and a.step == "SetWeights"][0] == "web.qa"
    # Each step is taken on the three hosts before any host goes on: they run as one group.
    observes = [i for i, a in enumerate(plan.actions) if a.step == "Observe"]
    assert [plan.actions[i].host for i in observes] == list(HOSTS) * 3
    assert all(plan.actions[i].seconds == 5.0 and plan.actions[i].max_error_rate == 0.01 for i in observes)
    assert "10% of new requests" in plan.actions[observes[3]].reason


def test_a_canary_to_100_percent_holds_each_share_and_ends_on_green_only(world):
    deploy(world, web(V1), "r1")
    held = []

    def traffic(router):  # what the router weighs while a pause reads it
        held.append((router.host.name, world.clock(), backend(world, router.host.name).get(server(V2))))

    for r in world.routers.values():
        r.traffic = traffic
    plan, outcome = deploy(world, web(V2), "r2")
    assert outcome.result == "deployed", outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V2): 100}
        assert backend(world, h, "web.qa") == {}  # the QA backend is empty again: QA requests go to the backend
        assert world.hosts[h].by_name("prod-web").image == V2
    shares = sorted({w for host, _, w in held if host == "h1" and w is not None})
    assert shares == [0, 10, 50]  # the pauses; 100 is the switch
    # Every share was held at least the pause (fake clock).
    for share in (0, 10, 50):
        times = [t for host, t, w in held if host == "h1" and w == share]
        assert max(times) - min(times) >= 5.0, share
    assert world.violations == []
    assert world.plan(environment(web(V2)), "r2").in_sync


def test_errors_above_the_rule_abort_the_canary_back_to_blue_on_every_host(world):
    deploy(world, web(V1), "r1")
    green = server(V2)

    def traffic(router):  # green answers one request in five with a 500 once it has public weight
        s = router.servers_.get(("web", green))
        if s is not None and s.weight > 0 and not s.maint:
            s.total += 5
            s.errors += 1

    world.routers["h2"].traffic = traffic
    plan, outcome = deploy(world, web(V2), "r2")
    assert outcome.result == "rolled-back"
    assert "canary at 10%" in outcome.failure and "more than 1%" in outcome.failure, outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V1): 100}, h
        assert backend(world, h, "web.qa") == {}, h  # QA requests no longer reach the aborted release
        assert world.hosts[h].by_name("prod-web").image == V1
        assert world.hosts[h].by_name("prod-web-next") is None
    assert world.violations == []


def test_a_count_rule_tolerates_that_many_errors():
    assert canary.broken(5, None, 5, 10) is None and "more than 5" in canary.broken(5, None, 6, 10)
    assert canary.broken(None, 0.01, 1, 100) is None and "more than 1%" in canary.broken(None, 0.01, 2, 100)
    assert canary.broken(None, 0.0, 1, 1000) is not None  # 0%: any error


def test_green_down_during_a_pause_aborts(world):
    deploy(world, web(V1), "r1")
    green = server(V2)

    def traffic(router):
        s = router.servers_.get(("web", green))
        if s is not None and s.weight == 50:
            s.up = False  # its check failed `fall` times: the router took it out

    world.routers["h3"].traffic = traffic
    _, outcome = deploy(world, web(V2), "r2")
    assert outcome.result == "rolled-back" and "DOWN" in outcome.failure, outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V1): 100}, h


def test_the_watch_after_the_switch_rolls_every_host_back_to_the_retained_blue(world):
    deploy(world, web(V1, strategy="auto", watch=30.0), "r1")
    green = server(V2)
    start = {}

    def traffic(router):
        s = router.servers_.get(("web", green))
        if s is None or s.weight < 100:
            return
        start.setdefault(router.host.name, world.clock())
        if world.clock() - start[router.host.name] > 12:  # fine for 12 s after its switch, then 5xx
            s.total += 10
            s.errors += 5

    world.routers["h1"].traffic = traffic
    plan, outcome = deploy(world, web(V2, strategy="auto", watch=30.0), "r2")
    # Blue stays running as the router's standby (a backup server) until the watch is over.
    assert on(plan)[-9:] == ["DelServer", "AddServer", "WaitUp", "SetWeights", "Switch", "Watch", "Maint", "DelServer",
                             "Release"]
    assert [a.host for a in plan.actions if a.step == "Watch"] == list(HOSTS)
    standby = [a.route for a in plan.actions if a.host == "h1" and a.step == "AddServer"][-1]
    assert standby.server == server(V1) + "-standby" and standby.backup
    assert outcome.result == "rolled-back" and "watch after the switch" in outcome.failure, outcome.failure
    for h in HOSTS:  # every host had switched: each is switched back to its retained v1
        assert backend(world, h) == {server(V1): 100}, h
        assert world.hosts[h].by_name("prod-web").image == V1
        assert world.hosts[h].by_name("prod-web").state == "running"
    assert world.violations == []


def test_a_green_down_during_the_watch_is_replaced_by_the_standby_at_once(world):
    deploy(world, web(V1, strategy="auto", watch=30.0), "r1")
    green = server(V2)
    down = {}

    def traffic(router):
        s = router.servers_.get(("web", green))
        if s is not None and s.weight == 100 and ("web", server(V1) + "-standby") in router.servers_:
            down.setdefault(router.host.name, world.clock())
            if world.clock() - down[router.host.name] > 5:
                s.up = False  # its check failed: the router took it out
                # What a request gets now: the standby, blue.
                assert router.effective("web") == [server(V1) + "-standby"]

    for r in world.routers.values():
        r.traffic = traffic
    _, outcome = deploy(world, web(V2, strategy="auto", watch=30.0), "r2")
    assert outcome.result == "rolled-back" and "DOWN" in outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V1): 100}, h  # the standby taken out with green
        assert world.hosts[h].by_name("prod-web").image == V1
    assert world.violations == []  # never a moment without a server, nor one on a stopped container


def test_after_a_quiet_watch_the_standby_is_taken_out_and_blue_stops(world):
    deploy(world, web(V1, strategy="auto", watch=30.0), "r1")
    _, outcome = deploy(world, web(V2, strategy="auto", watch=30.0), "r2")
    assert outcome.result == "deployed"
    for h in HOSTS:
        assert backend(world, h) == {server(V2): 100}
        retired = world.hosts[h].by_name(managed.container_name(ENV, "web", managed.ROLE_RETIRED, managed.config_hash(web(V1))))
        assert retired.state == "exited"
    assert world.plan(environment(web(V2, strategy="auto", watch=30.0)), "r2").in_sync


def test_a_watch_that_sees_nothing_wrong_ends_the_deploy_after_its_window(world):
    deploy(world, web(V1, strategy="auto", watch=30.0), "r1")
    before = world.clock()
    _, outcome = deploy(world, web(V2, strategy="auto", watch=30.0), "r2")
    assert outcome.result == "deployed" and world.clock() - before >= 30.0


def test_a_watch_begun_by_a_dead_run_continues_for_what_is_left_of_its_window(world):
    service = web(V2, strategy="auto", watch=300.0)
    deploy(world, web(V1, strategy="auto", watch=300.0), "r1")
    deploy(world, replace(service, rollout=replace(service.rollout, watch=0.0)), "r2")  # switched, watch not run
    env = environment(service)
    records = [{"event": "done", "step": "Switch", "host": h, "service": "web"} for h in HOSTS]
    records += [{"event": "watch", "host": "h1", "service": "web", "since": 1000.0, "until": 1300.0},
                {"event": "watch", "host": "h2", "service": "web", "since": 1000.0, "until": 1300.0},
                {"event": "done", "step": "Watch", "host": "h2", "service": "web"}]
    plan = world.plan(env, "r2")
    assert plan.in_sync
    resumed = canary.resumed_watches(plan, env, world.observe(), records)
    assert [(a.host, a.step, a.since) for a in resumed.actions if a.step == "Watch"] == [("h1", "Watch", 1000.0),
                                                                                         ("h3", "Watch", 0.0)]
    assert [(a.host, a.step) for a in resumed.actions if a.step != "Watch"] == [("h1", "Release"), ("h3", "Release")]
    assert "what is left" in resumed.actions[0].reason
    # Run at 1250: h1 watches the 50 s left of its window, h3 a whole one.
    outcome = world.executor(env, "r2", wall=lambda: 1250.0).apply(resumed)
    assert outcome.result == "deployed"
    # A plan that deploys the service again watches anyway: no resumed watch then.
    again = world.plan(environment(web(V1, strategy="auto", watch=300.0)), "r3")
    assert not [a for a in canary.resumed_watches(again, env, world.observe(), records).actions
                if a.step == "Watch" and a.since]


def test_the_watch_resumes_with_its_remaining_time_only(world):
    deploy(world, web(V1, strategy="auto", watch=300.0), "r1")
    env = environment(web(V1, strategy="auto", watch=300.0))
    watch = canary.watches(env.service("web"), ["h1"], {"h1": 1000.0})
    before = world.clock()
    outcome = world.executor(env, "r1", wall=lambda: 1280.0).apply(Plan(ENV, "r1", tuple(watch)))
    assert outcome.result == "deployed"
    assert 20.0 <= world.clock() - before < 22.0  # 20 s were left of the 300 s window


def test_a_canary_killed_mid_way_resumes_from_its_weight_and_observes_the_pauses_left(world):
    deploy(world, web(V1), "r1")
    world.routers["h2"].applied.clear()
    world.routers["h2"].kill_at = ("SetWeights", 3)  # QA, 10 %, then dies before 50 %
    with pytest.raises(Killed):
        deploy(world, web(V2), "r2")
    world.routers["h2"].kill_at = None
    assert backend(world, "h2")[server(V2)] == 10
    plan, outcome = deploy(world, web(V2), "r2")
    h2 = on(plan, "h2")
    # From the weight the router has (10 %): its pause again, then 50 %; never the QA-only step before it.
    assert h2[0] == "Adopt" and "Start" not in h2 and h2.count("Observe") == 2, h2
    assert outcome.result == "deployed", outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V2): 100}, h
    assert world.violations == []


def test_a_first_canary_deploy_has_no_traffic_to_share_and_switches_straight_to_green(world):
    plan, outcome = deploy(world, web(V1), "r1")
    assert "Observe" not in on(plan) and outcome.result == "deployed"


def test_the_config_has_the_sticky_cookie_and_the_qa_route():
    env = environment(web(V1, canary_=replace(CANARY, qa_cookie="qa")))
    text = router_config.render_config(rt.site_for(env, "h1"), {"web": (rt.Server("web-a", "10.0.0.2", 8080, 100),),
                                                     "web.qa": (rt.Server("web-b", "10.0.0.3", 8080, 100),)})
    assert "    acl qa_web req.hdr(X-Canary) -m found\n    acl qa_web req.cook(qa) -m found\n" \
           "    use_backend web.qa if host_web qa_web { nbsrv(web.qa) gt 0 }\n    use_backend web if host_web\n" in text
    assert "backend web\n    balance roundrobin\n    timeout check 2000ms\n" \
           "    cookie rcl-web insert indirect nocache dynamic\n    dynamic-cookie-key reconciler-web\n" in text
    assert "backend web.qa\n" in text and "server web-b 10.0.0.3:8080" in text
    assert rt.backends(rt.site_for(env, "h1")) == {"web", "web.qa", rt.UNROUTED_BACKEND}
    # A sticky backend gets each added server's cookie computed (HAProxy 2.6 takes no ``cookie`` on ``add server``).
    add = router_steps.AddServer("h1", "web", "web-x", "10.0.0.9", 8080, sticky=True)
    assert "enable dynamic-cookie backend web" in [c.line for c in router_steps.commands(add)]
    # Without a canary, the config is what blue-green had.
    plain = router_config.render_config(rt.site_for(environment(web(V1, strategy="auto")), "h1"), {})
    assert "cookie" not in plain and "qa" not in plain


def one_in_five_failing(green: str):
    """Router traffic where ``green`` answers 1 request in 5 with an error while it takes any."""
    def traffic(router):
        s = router.servers_.get(("web", green))
        if s is not None and s.weight > 0 and not s.maint:
            s.total += 5
            s.errors += 1

    return traffic


def test_the_first_host_to_fail_stops_the_others_pause_so_the_switch_back_starts_at_once(world):
    deploy(world, web(V1), "r1")
    green = server(V2)
    world.routers["h1"].traffic = one_in_five_failing(green)
    events = []
    _, outcome = deploy_reporting(world, web(V2), "r2", events)
    assert outcome.result == "rolled-back" and outcome.failure.startswith("h1: canary at 10%"), outcome.failure
    at_ten = [(e, f["host"]) for e, f in events if f.get("step") == "Observe" and e in ("done", "failed")][-3:]
    # h1's verdict; h2 and h3 stopped holding their pause (5 s) at once, without one of their own.
    assert sorted(at_ten) == [("done", "h2"), ("done", "h3"), ("failed", "h1")], at_ten
    readings = [w for w in world.routers["h2"].weights_seen if w.get(("web", green)) == 10]
    assert len(readings) < 5, len(readings)  # a pause of 5 s read every 0.5 s would be 10 readings and more


def deploy_reporting(world, service, revision, events):
    env = environment(service)
    plan = world.plan(env, revision)
    report = lambda event, **fields: events.append((event, fields))  # noqa: E731
    return plan, world.executor(env, revision, observers=(report,)).apply(plan)


def test_the_switch_back_of_an_aborted_canary_leaves_blue_serving_all_along(world):
    """Blue is in the router during the canary: switching back must not re-add or re-check it."""
    deploy(world, web(V1), "r1")
    green = server(V2)
    world.routers["h1"].traffic = one_in_five_failing(green)
    for r in world.routers.values():
        r.applied.clear()
    _, outcome = deploy(world, web(V2), "r2")
    assert outcome.result == "rolled-back"
    for h in HOSTS:
        # Green and green in the QA backend only: blue never re-added (that would put it in
        # maintenance and re-check it while green took every request).
        assert world.routers[h].applied.count("AddServer") == 2, world.routers[h].applied
        assert backend(world, h) == {server(V1): 100}


def test_plan_shows_the_pauses_and_the_watch_with_their_rule(world):
    import json

    from reconciler.core.report import plan_json, plan_text

    deploy(world, web(V1, watch=120.0), "r1")
    plan = world.plan(environment(web(V2, watch=120.0, max_errors=3, max_error_rate=None)), "r2")
    text = plan_text(plan)
    assert f"    Observe          h1/web: hold 10% of new requests on {server(V2)} for 5s; abort on more than 3 " \
           "errors or its check failing" in text
    assert f"    Watch            h2/web: watch {server(V2)} for 120s after the switch" in text
    assert "QA requests only (header X-Canary)" in text
    assert {a["step"] for a in json.loads(plan_json(plan))["actions"]} >= {"Observe", "Watch", "Release"}
