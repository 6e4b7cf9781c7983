"""The executor against three in-memory hosts: deploys, rollbacks, faults.

Every test asserts the end state of the world (which container, with which
image, in which state, under which name, on every host), not the calls made.
The clock is fake: health deadlines pass without anyone sleeping.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fakes import NEVER_OK, World, exits_after, image, ok_for
from reconciler.core import managed
from reconciler.errors import EngineError, HostUnreachable, RollbackFailed
from reconciler.core.model import Environment, HealthCheck, Host, Policy, PortMapping, Rollout, Service
from reconciler.core.plan import Plan

ENV = "prod"
HOSTS = ("h1", "h2", "h3")
V1 = image("registry.test/web", "v1")
V2 = image("registry.test/web", "v2")
BAD = image("registry.test/web", "never-healthy")
DB1 = image("registry.test/db", "1")
DB2 = image("registry.test/db", "2")
CHECK = HealthCheck(kind="http", port=80, interval=1.0, successes=2, deadline=10.0)
PORTS = (PortMapping(8080, 80),)

STRATEGIES = {"start-first": (), "stop-first": PORTS}


def web(img=V1, *, ports=(), batch_size=1, hosts=HOSTS, **kw) -> Service:
    return Service("web", img, hosts, ports=ports, health=CHECK, rollout=Rollout(batch_size=batch_size), **kw)


def environment(*services: Service, **policy) -> Environment:
    return Environment(ENV, tuple(Host(h, f"10.0.0.{i}") for i, h in enumerate(HOSTS, 1)), services, Policy(**policy))


@pytest.fixture
def world() -> World:
    w = World(*HOSTS)
    w.registry.publish(V1)
    w.registry.publish(V2)
    w.registry.publish(BAD, NEVER_OK, logs="panic: cannot read /etc/web.conf")
    w.registry.publish(DB1)
    w.registry.publish(DB2)
    yield w
    assert not w.concurrent_use, "two threads used one host at once (DockerHost is not thread-safe)"


def deployed(world: World, *services: Service, **policy) -> dict:
    """Deploy ``services`` and return the world's snapshot afterwards."""
    outcome = world.apply(environment(*services, **policy), "r-setup")
    assert outcome.result == "deployed", outcome
    return world.snapshot()


def retired_name(service: Service) -> str:
    return managed.container_name(ENV, service.name, managed.ROLE_RETIRED, managed.config_hash(service))


class Recorder:
    """A reporter that remembers events and can run a hook on one."""

    def __init__(self, hooks=None) -> None:
        self.events: list[tuple[str, dict]] = []
        self.hooks = hooks or {}

    def __call__(self, event: str, **fields) -> None:
        self.events.append((event, fields))
        hook = self.hooks.get((event, fields.get("step"), fields.get("host")))
        if hook:
            hook()

    def count(self, event: str) -> int:
        return sum(1 for e, _ in self.events if e == event)


# ---------------------------------------------------------------- success


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_v1_to_v2_every_host_runs_v2_with_v1_retired(world, strategy):
    ports = STRATEGIES[strategy]
    before = deployed(world, web(V1, ports=ports))
    old_ids = {h: before[h]["prod-web"][0] for h in HOSTS}

    outcome = world.apply(environment(web(V2, ports=ports)), "r2")

    assert outcome.result == "deployed" and outcome.failure is None
    for h in HOSTS:
        snap = world.snapshot()[h]
        assert {name: (state, img) for name, (_, state, img) in snap.items()} == {
            "prod-web": ("running", str(V2)),
            retired_name(web(V1, ports=ports)): ("exited", str(V1)),
        }
        # the retired one is the very container that ran v1: a rollback is a start
        assert snap[retired_name(web(V1, ports=ports))][0] == old_ids[h]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_second_plan_after_a_deploy_is_empty(world, strategy):
    ports = STRATEGIES[strategy]
    deployed(world, web(V1, ports=ports))
    world.apply(environment(web(V2, ports=ports, batch_size=2)), "r2")
    assert world.plan(environment(web(V2, ports=ports, batch_size=2)), "r2") == Plan(ENV, "r2")


def test_apply_on_an_in_sync_plan_changes_nothing(world):
    before = deployed(world, web())
    calls = {h: dict(host.calls) for h, host in world.hosts.items()}
    plan = world.plan(environment(web()), "r-setup")
    outcome = world.executor(environment(web()), "r-setup").apply(plan)
    assert outcome.result == "in-sync" and outcome.steps == []
    assert world.snapshot() == before
    assert {h: dict(host.calls) for h, host in world.hosts.items()} == {
        h: {**c, "observe": c["observe"] + 1} for h, c in calls.items()  # only the planner's look
    }


def test_dependency_is_deployed_before_its_dependent(world):
    db = replace(web(DB1), name="db")
    api = replace(web(V1), name="api", depends_on=("db",))
    recorder = Recorder()
    outcome = world.apply(environment(api, db), "r1", report=recorder)
    assert outcome.result == "deployed"
    healthy = [f["service"] for e, f in recorder.events if e == "done" and f["step"] == "CheckHealth"]
    assert healthy == ["db"] * 3 + ["api"] * 3


def test_removed_service_is_removed_with_prune_and_unmanaged_left_alone(world):
    deployed(world, web(), replace(web(DB1), name="db"))
    world.hosts["h1"].add_unmanaged("postgres", DB1)
    outcome = world.apply(environment(web(), prune=True), "r2")
    assert outcome.result == "deployed"
    assert {h: sorted(world.snapshot()[h]) for h in HOSTS} == {"h1": ["postgres", "prod-web"], "h2": ["prod-web"], "h3": ["prod-web"]}


def test_drift_heal_restarts_the_container_stopped_by_hand(world):
    before = deployed(world, web())
    h2 = world.hosts["h2"]
    h2.stop(h2.by_name("prod-web").id, 10)
    outcome = world.apply(environment(web(), drift="heal"), "r1")
    assert outcome.result == "deployed"
    assert world.snapshot() == before  # same container, running again


def test_leftover_candidate_of_an_interrupted_run_is_cleaned_up(world):
    deployed(world, web())
    world.hosts["h1"].run_container(web(V2), ENV, "r2", "prod-web-next", state="created")
    outcome = world.apply(environment(web(V2)), "r2")
    assert outcome.result == "deployed"
    assert world.active(ENV, "web") == {h: (str(V2), "running") for h in HOSTS}
    assert all("prod-web-next" not in snap for snap in world.snapshot().values())


def test_retention_keeps_the_newest_retired_and_drops_their_images(world):
    tags = ["a", "b", "c", "d"]
    for tag in tags:
        world.registry.publish(image("registry.test/web", tag))
    for tag in tags:
        world.clock.sleep(60)
        world.apply(environment(web(image("registry.test/web", tag), hosts=("h1",)), keep_retired=2), f"r-{tag}")
    h1 = world.hosts["h1"]
    assert {name: img for name, (_, _, img) in h1.snapshot().items()} == {
        "prod-web": str(image("registry.test/web", "d")),
        retired_name(web(image("registry.test/web", "c"))): str(image("registry.test/web", "c")),
        retired_name(web(image("registry.test/web", "b"))): str(image("registry.test/web", "b")),
    }
    assert image("registry.test/web", "a").pull_ref not in h1.images


def test_redeploying_an_earlier_version_keeps_the_rollback_target(world):
    # v1 -> v2 -> v1 -> v2 with keep_retired=1: v1 retires into the name its
    # older twin has; the prune after the switch must not delete it.
    env = lambda img: environment(web(img, hosts=("h1",)), keep_retired=1)  # noqa: E731
    for n, img in enumerate((V1, V2, V1, V2)):
        world.clock.sleep(60)
        assert world.apply(env(img), f"r{n}").result == "deployed"
    assert {name: (state, img) for name, (_, state, img) in world.hosts["h1"].snapshot().items()} == {
        "prod-web": ("running", str(V2)),
        retired_name(web(V1)): ("exited", str(V1)),
    }


# ---------------------------------------------------------------- health failure and rollback


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_never_healthy_image_rolls_back_on_the_host_that_failed(world, strategy):
    ports = STRATEGIES[strategy]
    before = deployed(world, web(V1, ports=ports))
    outcome = world.apply(environment(web(BAD, ports=ports)), "r-bad")
    assert outcome.result == "rolled-back"
    assert world.snapshot() == before  # the same v1 containers, running, under their names
    assert outcome.failure.startswith("h1: health check failed: not healthy within 10s (0/2 consecutive passes)")
    assert "http check failed on prod-web" in "\n".join(outcome.evidence)
    assert "logs:\npanic: cannot read /etc/web.conf" in outcome.evidence


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_failure_in_a_later_batch_restores_hosts_switched_earlier(world, strategy):
    ports = STRATEGIES[strategy]
    before = deployed(world, web(V1, ports=ports))
    world.hosts["h3"].scripts[V2.digest] = NEVER_OK  # v2 works on h1 and h2, not on h3
    recorder = Recorder()
    outcome = world.apply(environment(web(V2, ports=ports)), "r2", report=recorder)
    assert outcome.result == "rolled-back"
    assert outcome.failure.startswith("h3: health check failed")
    assert world.snapshot() == before
    assert world.active(ENV, "web") == {h: (str(V1), "running") for h in HOSTS}
    assert sorted(f["host"] for e, f in recorder.events if e == "restored") == ["h1", "h2", "h3"] if ports else ["h1", "h2"]


def test_container_that_exits_fails_at_once_with_evidence(world):
    before = deployed(world, web())
    world.registry.publish(V2, exits_after(1), logs="segfault")
    outcome = world.apply(environment(web(V2)), "r2")
    assert outcome.result == "rolled-back"
    assert outcome.failure == "h1: health check failed: container is exited"
    assert outcome.evidence[-1] == "logs:\nsegfault"
    assert world.clock.now - 1000.0 < CHECK.deadline * 2  # did not wait for the deadline
    assert world.snapshot() == before


def test_service_that_passes_once_then_fails_is_not_healthy(world):
    before = deployed(world, web())
    world.registry.publish(V2, ok_for(1))
    assert world.apply(environment(web(V2)), "r2").result == "rolled-back"
    assert world.snapshot() == before


def test_failed_dependent_rolls_back_its_dependency_too(world):
    db, api = replace(web(DB1), name="db"), replace(web(V1), name="api", depends_on=("db",))
    before = deployed(world, api, db)
    outcome = world.apply(environment(replace(api, image=BAD), replace(db, image=DB2)), "r2")
    assert outcome.result == "rolled-back"
    assert world.snapshot() == before


# ---------------------------------------------------------------- pre-flight


def test_pull_failure_on_one_host_changes_nothing_and_names_the_host(world):
    before = deployed(world, web())
    world.hosts["h2"].fail("pull", error=EngineError)
    with pytest.raises(EngineError) as raised:
        world.apply(environment(web(V2)), "r2")
    assert raised.value.host == "h2" and str(raised.value).startswith("h2: ")
    assert world.snapshot() == before


def test_image_missing_from_the_registry_changes_nothing(world):
    before = deployed(world, web())
    missing = image("registry.test/web", "typo")
    with pytest.raises(EngineError, match="manifest unknown"):
        world.apply(environment(web(missing)), "r2")
    assert world.snapshot() == before


def test_host_unreachable_before_the_run_changes_nothing(world):
    before = deployed(world, web())
    plan = world.plan(environment(web(V2)), "r2")
    world.hosts["h3"].go_down()
    with pytest.raises(HostUnreachable) as raised:
        world.executor(environment(web(V2)), "r2").apply(plan)
    assert raised.value.host == "h3"
    world.hosts["h3"].come_back()
    assert world.snapshot() == before


# ---------------------------------------------------------------- faults mid-deploy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_transient_fault_mid_deploy_restores_every_host(world, strategy):
    ports = STRATEGIES[strategy]
    before = deployed(world, web(V1, ports=ports))
    world.hosts["h2"].fail("create")  # one call fails; the host answers again afterwards
    outcome = world.apply(environment(web(V2, ports=ports)), "r2")
    assert outcome.result == "rolled-back"
    assert outcome.failure.startswith("h2: create: injected HostUnreachable")
    assert world.snapshot() == before


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_host_lost_mid_deploy_others_restored_and_it_converges_later(world, strategy):
    ports = STRATEGIES[strategy]
    before = deployed(world, web(V1, ports=ports))
    h2 = world.hosts["h2"]
    recorder = Recorder({("begin", "Start", "h2"): h2.go_down})
    if strategy == "stop-first":
        # h2's old container was stopped and renamed before the host went
        # away: it cannot be restored now.  That is the network's fault, not
        # the commit's: the outcome says so and asks for another reconcile.
        outcome = world.apply(environment(web(V2, ports=ports)), "r2", report=recorder)
        assert outcome.result == "rolled-back" and outcome.transient
        assert "not restored" in outcome.failure and "h2/web" in outcome.failure
        assert "h1/web" not in outcome.failure.split("not restored")[1]
    else:
        # start-first: the old container on h2 was never touched.
        outcome = world.apply(environment(web(V2, ports=ports)), "r2", report=recorder)
        assert outcome.result == "rolled-back" and outcome.failure.startswith("h2: ")
    assert recorder.count("rollback") == 1
    after = world.snapshot()
    assert after["h1"] == before["h1"] and after["h3"] == before["h3"]
    # h2 comes back; a reconcile of the last good state converges it
    h2.come_back()
    expected = "deployed" if strategy == "stop-first" else "in-sync"
    assert world.apply(environment(web(V1, ports=ports)), "r1").result == expected
    assert world.active(ENV, "web") == {h: (str(V1), "running") for h in HOSTS}
    assert world.plan(environment(web(V1, ports=ports)), "r1").actions == ()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stop_failing_while_retiring_still_rolls_back_cleanly(world, strategy):
    # The old container's stop fails, so it still has the service's name when
    # the rollback wants to give that name back.
    ports = STRATEGIES[strategy]
    before = deployed(world, web(V1, ports=ports))
    world.hosts["h2"].fail("stop", error=EngineError)
    outcome = world.apply(environment(web(V2, ports=ports)), "r2")
    assert outcome.result == "rolled-back"
    assert world.snapshot() == before


def test_rollback_failure_is_raised_once_and_others_still_restored(world):
    before = deployed(world, web())
    world.hosts["h3"].scripts[V2.digest] = NEVER_OK
    h1 = world.hosts["h1"]
    recorder = Recorder({("rollback", None, None): lambda: h1.fail("start", error=EngineError)})
    with pytest.raises(RollbackFailed) as raised:
        world.apply(environment(web(V2)), "r2", report=recorder)
    message = str(raised.value)
    assert message.startswith("rollback failed; these hosts need a human now:\nh1/web: h1: start")
    assert "h2/web" not in message and "h3/web" not in message
    assert recorder.count("rollback") == 1
    after = world.snapshot()
    assert after["h2"] == before["h2"] and after["h3"] == before["h3"]


def test_rollback_target_unhealthy_is_a_rollback_failure(world):
    deployed(world, web())
    world.hosts["h2"].scripts[V2.digest] = NEVER_OK
    h1 = world.hosts["h1"]
    recorder = Recorder({("rollback", None, None): lambda: h1.scripts.__setitem__(V1.digest, NEVER_OK)})
    with pytest.raises(RollbackFailed, match="h1/web: h1: health check failed"):
        world.apply(environment(web(V2)), "r2", report=recorder)
    assert recorder.count("rollback") == 1


def test_rollback_of_two_services_on_one_host_uses_it_from_one_thread(world):
    # DockerHost is not thread-safe: the executor must never drive one host
    # from two workers at once, rollback included.  (The fixture checks.)
    db, api = replace(web(DB1), name="db"), replace(web(V1), name="api", depends_on=("db",))
    before = deployed(world, api, db)
    for _ in range(5):
        outcome = world.apply(environment(replace(api, image=BAD, rollout=Rollout(batch_size=3)), replace(db, image=DB2, rollout=Rollout(batch_size=3))), "r2")
        assert outcome.result == "rolled-back"
        assert world.snapshot() == before


def test_switch_failing_after_the_old_one_retired_restores_it(world):
    # start-first Switch: retire the old one (rename 1), promote -next (rename 2).
    before = deployed(world, web())
    world.hosts["h2"].fail("rename", on_call=2, error=EngineError)
    outcome = world.apply(environment(web(V2)), "r2")
    assert outcome.result == "rolled-back"
    assert outcome.failure.startswith("h2: rename")
    assert world.snapshot() == before


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_batch_over_all_hosts_failing_on_one_restores_all(world, strategy):
    ports = STRATEGIES[strategy]
    before = deployed(world, web(V1, ports=ports))
    world.hosts["h2"].scripts[V2.digest] = NEVER_OK
    outcome = world.apply(environment(web(V2, ports=ports, batch_size=3)), "r2")
    assert outcome.result == "rolled-back" and outcome.failure.startswith("h2: ")
    assert world.snapshot() == before


def test_new_service_that_never_gets_healthy_leaves_nothing_behind(world):
    outcome = world.apply(environment(web(BAD)), "r1")
    assert outcome.result == "rolled-back"
    assert world.snapshot() == {h: {} for h in HOSTS}


def test_rollback_verifies_the_old_version_with_its_own_health_check(world):
    v1_check = CHECK
    v2_check = replace(CHECK, path="/healthz")
    world.registry.publish(V1, answers=lambda check: check.path == "/")  # v1 has no /healthz
    before = deployed(world, replace(web(V1), health=v1_check))
    world.hosts["h2"].scripts[V2.digest] = NEVER_OK
    outcome = world.apply(environment(replace(web(V2), health=v2_check)), "r2")
    assert outcome.result == "rolled-back"
    assert world.snapshot() == before


def _rollback(world: World, env, to_revision=None):
    from reconciler.core.plan import plan_rollback

    plan = plan_rollback(env, world.observe(), to_revision)
    return plan, world.executor(env, plan.revision).apply(plan)


def test_rollback_lever_restores_the_retained_version_everywhere_and_back(world):
    world.apply(environment(web(V1)), "r1")
    world.apply(environment(web(V2)), "r2")
    plan, outcome = _rollback(world, environment(web(V2)), "r1")
    assert outcome.result == "deployed" and not plan.findings
    assert world.active(ENV, "web") == {h: (str(V1), "running") for h in HOSTS}
    # v2 was kept in turn: rolling "back" again returns to it.
    _, outcome = _rollback(world, environment(web(V2)))
    assert outcome.result == "deployed"
    assert world.active(ENV, "web") == {h: (str(V2), "running") for h in HOSTS}
    assert not world.concurrent_use


def test_rollback_lever_that_fails_its_check_puts_everything_back(world):
    world.apply(environment(web(V1)), "r1")
    before = deployed(world, web(V2))
    world.hosts["h3"].scripts[V1.digest] = NEVER_OK  # v1 no longer starts healthy on h3
    _, outcome = _rollback(world, environment(web(V2)), "r1")
    assert outcome.result == "rolled-back"
    assert world.snapshot() == before


def test_rollback_lever_without_a_target_on_some_host_is_a_finding(world):
    world.apply(environment(web(V1)), "r1")
    world.apply(environment(web(V2)), "r2")
    from reconciler.core.plan import plan_rollback

    plan = plan_rollback(environment(web(V2)), world.observe(), "nope")
    assert {(f.host, f.kind) for f in plan.findings} == {(h, "no-rollback-target") for h in HOSTS}
    assert plan.actions == ()


def test_preflight_names_every_host_that_failed(world):
    before = deployed(world, web(V1))
    world.hosts["h1"].fail("pull", error=EngineError)
    world.hosts["h3"].fail("pull", error=EngineError)
    with pytest.raises(EngineError) as raised:
        world.apply(environment(web(V2)), "r2")
    assert "2 hosts" in str(raised.value) and "h1" in str(raised.value) and "h3" in str(raised.value)
    assert world.snapshot() == before
