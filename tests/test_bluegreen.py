"""Blue-green through each host's router, planned and run on in-memory hosts and routers.

Every test checks the invariants a user sees (``routerfakes``): after every
router change and every container stop or removal, a backend that served
still has a server for a new request, and that server's container runs and
passed its check.  So "0 failed requests, 0 requests to an unhealthy
container" is asserted at every step, not only at the end.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fakes import NEVER_OK, image
from reconciler.core import managed
from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core import router_config
from reconciler.core.model import Environment, Expose, HealthCheck, Host, Policy, RouterConfig, Rollout, Service
from reconciler.core.plan import plan_deploy, plan_rollback
from routerfakes import Killed, RoutedWorld

ENV = "prod"
HOSTS = ("h1", "h2", "h3")
V1 = image("registry.test/web", "v1")
V2 = image("registry.test/web", "v2")
BAD = image("registry.test/web", "never-healthy")
CHECK = HealthCheck(kind="http", port=8080, path="/health", interval=0.5, successes=2, deadline=10.0)


def web(img=V1, *, batch_size=1, expose=Expose(8080, ("web.test",), drain=5.0), health=CHECK, hosts=HOSTS) -> Service:
    return Service("web", img, hosts, health=health, expose=expose, rollout=Rollout(batch_size=batch_size),
                   stop_timeout=2.0)


def environment(*services: Service) -> Environment:
    return Environment(ENV, tuple(Host(h, f"10.0.0.{i}") for i, h in enumerate(HOSTS, 1)), services,
                       Policy(parallel_hosts=3), router=RouterConfig(config_file="/srv/{host}/haproxy.cfg"))


@pytest.fixture
def world() -> RoutedWorld:
    w = RoutedWorld(*HOSTS)
    for ref in (V1, V2):
        w.registry.publish(ref)
    w.registry.publish(BAD, NEVER_OK, logs="panic: no config")
    yield w
    assert not w.concurrent_use


def steps(plan, host: str = "h1") -> list[str]:
    """The plan's steps on ``host``, pre-flight pulls left out."""
    return [a.step for a in plan.actions if a.host == host and a.step != "Pull"]


def backend(world: RoutedWorld, host: str) -> dict[str, tuple[int, bool]]:
    """server -> (weight, up) of the web backend on ``host``."""
    return {name: (s.weight, s.up) for (b, name), s in world.routers[host].servers_.items() if b == "web"}


def server(img) -> str:
    return rt.server_name("web", managed.config_hash(web(img)))


def deploy(world: RoutedWorld, img, revision: str, **kw):
    env = environment(web(img, **kw))
    plan = world.plan(env, revision)
    return plan, world.executor(env, revision).apply(plan)


def test_a_first_deploy_configures_each_router_and_routes_the_new_containers(world):
    plan, outcome = deploy(world, V1, "r1")
    assert [a.step for a in plan.actions if a.step != "Pull"][:3] == ["Configure"] * 3
    assert steps(plan) == ["Configure", "Start", "AddServer", "WaitUp", "SetWeights", "Switch"]
    assert outcome.result == "deployed", outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V1): (100, True)}
        assert world.hosts[h].by_name("prod-web").state == "running"
        assert world.routers[h].skeleton == router_config.skeleton_hash(rt.site_for(environment(web()), h))
    assert world.violations == []
    assert world.plan(environment(web(V1)), "r1").in_sync  # the router is observed too: nothing left


def test_v1_to_v2_switches_each_host_and_retires_blue_after_draining_it(world):
    deploy(world, V1, "r1")
    plan, outcome = deploy(world, V2, "r2")
    blue = server(V1)
    assert steps(plan) == ["Start", "AddServer", "WaitUp", "SetWeights", "Drain", "WaitDrained", "Maint",
                           "DelServer", "Switch"]
    assert [a.reason for a in plan.actions if a.host == "h1" and a.step in ("SetWeights", "Drain")] == [
        f"switch: every new request to {server(V2)}", f"drain {blue}: no new request"]
    # Batches of one host: h1's whole switch before h2's starts.
    assert [a.host for a in plan.actions if a.step == "Switch"] == list(HOSTS)
    assert outcome.result == "deployed", outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V2): (100, True)}
        assert world.hosts[h].by_name("prod-web").image == V2
        retired = world.hosts[h].by_name(managed.container_name(ENV, "web", managed.ROLE_RETIRED, managed.config_hash(web(V1))))
        assert retired.state == "exited"  # kept for a rollback, stopped only once drained
    assert world.violations == []


def test_a_green_that_never_turns_healthy_never_gets_a_request_and_the_deploy_fails(world):
    deploy(world, V1, "r1")
    before = world.snapshot()
    plan, outcome = deploy(world, BAD, "r3")
    assert outcome.result == "rolled-back" and "never saw" in outcome.failure
    assert "panic: no config" in "\n".join(outcome.evidence)
    assert world.snapshot() == before  # h1's green removed; h2 and h3 never touched
    for h in HOSTS:
        assert backend(world, h) == {server(V1): (100, True)}
    # The green was taken out without ever having weight.
    assert world.routers["h1"].applied[-2:] == ["Maint", "DelServer"]
    assert world.violations == []


def test_a_failure_on_a_later_host_switches_the_earlier_ones_back(world):
    deploy(world, V1, "r1")
    world.hosts["h3"].scripts[V2.digest] = NEVER_OK  # v2 fails only on h3, after h1 and h2 switched
    plan, outcome = deploy(world, V2, "r2")
    assert outcome.result == "rolled-back", outcome
    for h in HOSTS:
        assert backend(world, h) == {server(V1): (100, True)}, h
        assert world.hosts[h].by_name("prod-web").image == V1
        assert world.hosts[h].by_name("prod-web").state == "running"
    assert "SetWeights" in world.routers["h1"].applied[world.routers["h1"].applied.index("DelServer") + 1:]
    assert world.violations == []


def test_the_rollback_lever_is_a_switch_back_to_the_retained_blue(world):
    deploy(world, V1, "r1")
    deploy(world, V2, "r2")
    env = environment(web(V2))
    plan = plan_rollback(env, world.observe())
    assert steps(plan) == ["Revive", "AddServer", "WaitUp", "SetWeights", "Drain", "WaitDrained", "Maint",
                           "DelServer", "Switch"]
    assert [a.host for a in plan.actions[:3]] == list(HOSTS)  # every host at once
    outcome = world.executor(env, "previous").apply(plan)
    assert outcome.result == "deployed", outcome.failure
    for h in HOSTS:
        assert backend(world, h) == {server(V1): (100, True)}
        assert world.hosts[h].by_name("prod-web").image == V1
        v2 = world.hosts[h].by_name(managed.container_name(ENV, "web", managed.ROLE_RETIRED, managed.config_hash(web(V2))))
        assert v2.state == "exited"
    assert world.violations == []


ROUTER_STEPS = ["AddServer", "WaitUp", "SetWeights", "Drain", "WaitDrained", "Maint", "DelServer"]


@pytest.mark.parametrize("killed_at", ROUTER_STEPS)
def test_a_run_killed_mid_switch_is_continued_from_what_the_router_shows(world, killed_at):
    deploy(world, V1, "r1")
    world.routers["h2"].applied.clear()
    world.routers["h2"].kill_at = (killed_at, 1)
    with pytest.raises(Killed):
        deploy(world, V2, "r2")
    world.routers["h2"].kill_at = None
    plan, outcome = deploy(world, V2, "r2")
    assert outcome.result == "deployed", outcome.failure
    h2 = steps(plan, "h2")
    if killed_at == "AddServer":  # the candidate was started, the router never heard of it: started again
        assert h2[:2] == ["Remove", "Start"]
    else:
        # In effect before it runs: a drained blue with no session left is drained.
        continued = {"WaitDrained": "Maint"}.get(killed_at, killed_at)
        assert h2[0] == "Adopt" and "Start" not in h2 and h2[1] == continued, h2
    assert steps(plan, "h1") == []  # done before the kill
    for h in HOSTS:
        assert backend(world, h) == {server(V2): (100, True)}, h
        assert world.hosts[h].by_name("prod-web").image == V2
        assert world.hosts[h].by_name("prod-web-next") is None
    assert world.violations == []


def test_a_router_that_lost_its_servers_is_given_the_running_ones_again(world):
    deploy(world, V1, "r1")
    world.routers["h2"].servers_.clear()  # e.g. restarted without its state file
    plan = world.plan(environment(web(V1)), "r1")
    assert steps(plan, "h2") == ["AddServer", "WaitUp", "Ready", "SetWeights"] and steps(plan, "h1") == []
    assert world.executor(environment(web(V1)), "r1").apply(plan).result == "deployed"
    assert backend(world, "h2") == {server(V1): (100, True)}


def test_a_stale_server_is_taken_out_without_rechecking_the_serving_one(world):
    deploy(world, V1, "r1")
    world.routers["h1"].servers_[("web", "web-old")] = replace(world.routers["h1"].servers_[("web", server(V1))],
                                                               weight=0, maint=True, up=False)
    plan = world.plan(environment(web(V1)), "r1")
    assert steps(plan) == ["DelServer"]


def test_a_changed_rule_is_a_configure_only(world):
    deploy(world, V1, "r1")
    env = environment(web(V1, expose=Expose(8080, ("web.test",), "/app", 5.0)))
    plan = world.plan(env, "r1")
    assert [(a.host, a.step) for a in plan.actions] == [(h, "Configure") for h in HOSTS]
    assert world.executor(env, "r1").apply(plan).result == "deployed"
    assert world.plan(env, "r1").in_sync


def test_a_check_the_router_cannot_run_is_run_on_the_engine_first():
    plan = plan_deploy(environment(web(V1, health=HealthCheck(kind="command", command=("true",)))),
                       {h: managed.ObservedHost(h) for h in HOSTS}, "r1")
    assert steps(plan) == ["Start", "CheckHealth", "AddServer", "WaitUp", "Ready", "SetWeights", "Switch"]  # not observed: Ready kept


def test_without_an_observed_router_the_whole_switch_is_planned_and_nothing_for_a_running_release(world):
    deploy(world, V1, "r1")
    containers_only = {h: replace(o, router=None) for h, o in world.observe().items()}
    assert plan_deploy(environment(web(V1)), containers_only, "r1").in_sync
    plan = plan_deploy(environment(web(V2)), containers_only, "r2")
    assert steps(plan) == ["Start", "AddServer", "WaitUp", "Ready", "SetWeights", "Drain", "WaitDrained", "Maint",
                           "DelServer", "Switch"]
    assert [a.route.server for a in plan.actions if a.host == "h1" and a.step == "Drain"] == [server(V1)]


def test_services_without_expose_keep_their_strategies(world):
    plain = Service("worker", V1, HOSTS, health=HealthCheck(kind="running"))
    plan = world.plan(environment(plain), "r1")
    assert steps(plan) == ["Start", "CheckHealth", "Switch"]
    assert plain.strategy == "start-first"


def test_the_fake_router_sees_a_request_fail_or_reach_an_unhealthy_container(world):
    """The invariants above can fail: a stopped serving container, or weight to an unchecked server."""
    deploy(world, V1, "r1")
    h1 = world.hosts["h1"]
    h1.stop(h1.by_name("prod-web").id, 1)
    assert world.violations == ["h1: after stop, web/" + server(V1) + " gets requests but its container is exited"]
    router = world.routers["h2"]
    router.apply(router_steps.AddServer("h2", "web", "web-x", "172.31.0.9", 8080))
    router.apply(router_steps.SetWeights("h2", "web", (("web-x", 100), (server(V1), 0))))
    assert world.violations[-1] == "h2: after SetWeights, web has no server for a request"


def test_the_router_files_are_written_once_blue_drains_and_after_each_hosts_last_step_not_at_the_switch(world):
    first, _ = deploy(world, V1, "r1")
    assert [a.step for a in first.actions if a.host == "h1" and getattr(a, "persist", False)] == ["SetWeights"]
    second = world.plan(environment(web(V2)), "r2")
    assert [a.step for a in second.actions if a.host == "h1" and getattr(a, "persist", False)] == ["Drain", "DelServer"]
    # The last router step of a host comes before the Switch that stops blue.
    h1 = steps(second)
    assert h1.index("DelServer") < h1.index("Switch")


def test_a_failure_after_blue_was_drained_switches_back_to_it_out_of_drain(world):
    deploy(world, V1, "r1")
    world.routers["h1"].fail_at = ("Maint", 1)  # blue drained, then the router refuses a command
    world.routers["h1"].applied.clear()
    plan, outcome = deploy(world, V2, "r2")
    assert outcome.result == "rolled-back" and "injected" in outcome.failure
    applied = world.routers["h1"].applied
    after = applied[applied.index("Maint") + 1:]  # the switch back: blue out of drain, then every weight to it
    assert after[:2] == ["Ready", "SetWeights"], applied
    assert backend(world, "h1") == {server(V1): (100, True)}
    assert not world.routers["h1"].servers_[("web", server(V1))].drain
    assert world.hosts["h1"].by_name("prod-web").image == V1 and world.hosts["h1"].by_name("prod-web-next") is None
    assert world.violations == []


V3 = image("registry.test/web", "v3")


@pytest.mark.parametrize("then", ["back to v1", "on to v3"])
def test_a_candidate_left_serving_by_a_dead_run_is_drained_before_it_goes(world, then):
    world.registry.publish(V3)
    deploy(world, V1, "r1")
    world.routers["h2"].applied.clear()
    world.routers["h2"].kill_at = ("Drain", 1)  # h2 switched to v2, blue not drained yet: then the agent dies
    with pytest.raises(Killed):
        deploy(world, V2, "r2")
    world.routers["h2"].kill_at = None
    assert backend(world, "h2")[server(V2)] == (100, True) and world.hosts["h2"].by_name("prod-web-next")
    target = V1 if then == "back to v1" else V3
    plan, outcome = deploy(world, target, "r3")
    assert outcome.result == "deployed", outcome.failure
    h2 = steps(plan, "h2")
    if target == V1:  # the desired release is the active one: route to it, then remove the candidate
        assert h2 == ["SetWeights", "Drain", "WaitDrained", "Maint", "DelServer", "Remove"]
    else:  # the new candidate needs the name: the old one is set aside, running, until it is drained
        assert h2[:2] == ["Aside", "Start"] and h2[-1] == "Switch"
    for h in HOSTS:
        assert backend(world, h) == {server(target): (100, True)}, h
        assert world.hosts[h].by_name("prod-web").image == target
        running = [c.name for c in world.hosts[h].containers.values() if c.state == "running"]
        assert running == ["prod-web"], (h, running)
    assert world.violations == []


def test_the_router_waits_for_green_up_through_the_start_period_and_then_the_deadline(world):
    slow = replace(CHECK, start_period=20.0)
    deploy(world, V1, "r1", health=slow)
    plan = world.plan(environment(web(V2, health=slow)), "r2")
    waits = [a.route.deadline for a in plan.actions if a.step == "WaitUp"]
    assert waits == [30.0] * len(HOSTS)  # the start period (20s) given on top of the deadline (10s)
