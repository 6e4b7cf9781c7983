"""plan_deploy: desired + observed -> actions, changes and findings, compared by equality.

Observed hosts come from ``FakeHost``, so containers carry exactly the labels
the real driver puts on them.
"""

from __future__ import annotations

from dataclasses import replace


from reconciler.core import managed
from reconciler.core.model import Environment, HealthCheck, Host, Policy, PortMapping, Rollout, Service
from reconciler.core.plan import Finding, Plan, ServiceChange, plan_deploy
from reconciler.core.plan_steps import CheckHealth, Heal, Prune, Pull, Remove, Retire, Start, Switch
from fakes import World, image

ENV = "prod"
HOSTS = ("h1", "h2", "h3")
V1 = image("registry.test/web", "v1")
V2 = image("registry.test/web", "v2")
DB = image("registry.test/db", "16")


def web(img=V1, hosts=HOSTS, **kw) -> Service:
    return Service("web", img, hosts, health=HealthCheck(kind="http", port=80), **kw)


def environment(*services: Service, **policy) -> Environment:
    return Environment(ENV, tuple(Host(h, f"10.0.0.{i}") for i, h in enumerate(HOSTS, 1)), services, Policy(**policy))


def running(*services: Service, hosts=HOSTS, revision: str = "r0") -> World:
    """A world where each service already runs, active, on ``hosts``."""
    world = World(*HOSTS)
    for service in services:
        for h in hosts:
            world.hosts[h].run_container(service, ENV, revision, managed.container_name(ENV, service.name))
    return world


def start_first(service: str, img, hosts, batch: int = 0) -> list:
    return (
        [Start(h, service, f"run {img}", batch=batch, beside=True) for h in hosts]
        + [CheckHealth(h, service, "http check", batch=batch, beside=True) for h in hosts]
        + [Switch(h, service, "healthy: retire the old version", batch=batch) for h in hosts]
    )


def pulls(service: str, img, hosts) -> list:
    return [Pull(h, service, f"{img} is not on {h}", image=img) for h in hosts]


# ---------------------------------------------------------------- basics


def test_in_sync_has_no_actions_changes_or_findings():
    assert running(web()).plan(environment(web()), "r1") == Plan(ENV, "r1")


def test_new_service_is_created_everywhere_pulls_first():
    plan = World(*HOSTS).plan(environment(web()), "r1")
    assert plan.actions == tuple(pulls("web", V1, HOSTS) + _per_host_batches("web", V1))
    assert [(c.host, c.kind) for c in plan.changes] == [(h, "create") for h in HOSTS]
    assert ("image", None, str(V1)) in plan.changes[0].fields
    assert plan.findings == ()


def _per_host_batches(service, img, hosts=HOSTS):
    out = []
    for i, h in enumerate(hosts):
        out += start_first(service, img, (h,), i)
    return out


def test_image_change_is_an_update_with_the_field_diff():
    plan = running(web()).plan(environment(web(V2)), "r2")
    assert plan.actions == tuple(pulls("web", V2, HOSTS) + _per_host_batches("web", V2))
    assert plan.changes == tuple(ServiceChange(h, "web", "update", (("image", str(V1), str(V2)),)) for h in HOSTS)


def test_image_already_on_the_host_is_not_pulled():
    world = running(web())
    world.hosts["h2"].add_image(V2)
    plan = world.plan(environment(web(V2)), "r2")
    assert [a for a in plan.actions if isinstance(a, Pull)] == pulls("web", V2, ("h1", "h3"))


def test_env_change_shows_plain_values_and_masks_what_looks_secret():
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----"
    before = web(env=(("PGHOST", "db1"), ("TOKEN_URL", "https://a"), ("API_TOKEN", "t1"), ("CERT", "x")))
    after = web(env=(("PGHOST", "db2"), ("TOKEN_URL", "https://a"), ("API_TOKEN", "t2"), ("CERT", pem)))
    plan = running(before).plan(environment(after), "r2")
    fields = (("env.API_TOKEN", "(set)", "(set)"), ("env.CERT", "x", "(set)"), ("env.PGHOST", "db1", "db2"))
    assert plan.changes == tuple(ServiceChange(h, "web", "update", fields) for h in HOSTS)
    assert plan.actions == tuple(_per_host_batches("web", V1))  # same image: nothing to pull
    assert "t1" not in repr(plan.changes) and "t2" not in repr(plan.changes) and "PRIVATE KEY" not in repr(plan)


def test_a_container_from_before_the_env_label_shows_its_old_value_masked():
    world = running(web(env=(("PGHOST", "db1"),)))
    for host in world.hosts.values():
        for c in host.containers.values():
            c.labels.pop("io.reconciler.env", None)
    plan = world.plan(environment(web(env=(("PGHOST", "db2"),))), "r2")
    assert plan.changes[0].fields == (("env.PGHOST", "(set)", "db2"),)


def test_added_env_key_is_named_too():
    plan = running(web()).plan(environment(web(env=(("NEW", "x"),))), "r2")
    assert plan.changes[0].fields == (("env.NEW", None, "x"),)


# ---------------------------------------------------------------- removal


def test_removed_service_is_a_finding_without_prune():
    world = running(web(), replace(web(DB), name="db"))
    plan = world.plan(environment(web()), "r2")
    assert plan.actions == ()
    assert plan.findings == tuple(
        Finding(h, "db", "prune-disabled", "prod-db is no longer desired; policy prune is off") for h in HOSTS
    )


def test_removed_service_is_removed_with_prune():
    world = running(web(), replace(web(DB), name="db"))
    plan = world.plan(environment(web(), prune=True), "r2")
    assert plan.actions == tuple(Remove(h, "db", "no longer in the desired state", container="prod-db") for h in HOSTS)
    assert plan.changes == tuple(ServiceChange(h, "db", "remove") for h in HOSTS)
    assert plan.findings == ()


def test_host_removed_from_a_service_is_removed_there_with_prune():
    plan = running(web()).plan(environment(web(hosts=("h1", "h2")), prune=True), "r2")
    assert plan.actions == (Remove("h3", "web", "no longer in the desired state", container="prod-web"),)


def test_host_removed_from_a_service_without_prune_is_reported():
    plan = running(web()).plan(environment(web(hosts=("h1", "h2"))), "r2")
    assert plan.actions == ()
    assert plan.findings == (Finding("h3", "web", "prune-disabled", "prod-web is no longer desired; policy prune is off"),)


def test_other_environments_containers_are_not_ours():
    world = running(web())
    world.hosts["h1"].run_container(web(), "staging", "r0", "staging-web")
    assert world.plan(environment(web(), prune=True), "r1") == Plan(ENV, "r1")


def test_unmanaged_container_is_reported_and_never_acted_on():
    world = running(web())
    world.hosts["h2"].add_unmanaged("postgres", DB, labels={"maintainer": "ops"})
    for policy in ({}, {"prune": True, "drift": "heal"}):
        plan = world.plan(environment(web(), **policy), "r1")
        assert plan.actions == ()
        assert plan.findings == (Finding("h2", None, "unmanaged", "postgres has no reconciler labels; left alone"),)


# ---------------------------------------------------------------- hosts


def test_host_added_gets_a_create_only_there():
    world = running(web(), hosts=("h1", "h2"))
    plan = world.plan(environment(web()), "r2")
    assert plan.actions == tuple(pulls("web", V1, ("h3",)) + start_first("web", V1, ("h3",), 0))
    assert [(c.host, c.kind) for c in plan.changes] == [("h3", "create")]


# ---------------------------------------------------------------- drift


def _stopped_by_hand() -> World:
    world = running(web())
    h2 = world.hosts["h2"]
    h2.stop(h2.by_name("prod-web").id, 10)
    return world


def test_container_stopped_by_hand_is_drift_reported():
    plan = _stopped_by_hand().plan(environment(web(), drift="report"), "r1")
    assert plan.actions == ()
    assert plan.findings == (Finding("h2", "web", "drift", "prod-web is exited, desired running (policy drift: report)"),)


def test_container_stopped_by_hand_is_healed_when_policy_says_so():
    plan = _stopped_by_hand().plan(environment(web(), drift="heal"), "r1")
    assert plan.actions == (Heal("h2", "web", "drift: prod-web is exited, desired running", container="prod-web"),)
    assert plan.changes == (ServiceChange("h2", "web", "heal", (("state", "exited", "running"),)),)
    assert plan.findings == ()


# ---------------------------------------------------------------- leftovers and retention


def test_leftover_candidate_is_removed_before_the_deploy():
    world = running(web())
    world.hosts["h1"].run_container(web(V2), ENV, "r1", "prod-web-next", state="created")
    plan = world.plan(environment(web(V2)), "r2")
    leftover = Remove("h1", "web", "remove the candidate an interrupted deploy left behind", container="prod-web-next")
    pulls_h = pulls("web", V2, ("h2", "h3"))  # h1 has V2 already: the leftover brought it
    assert plan.actions == tuple(pulls_h + [leftover] + _per_host_batches("web", V2))


def _retired(world: World, host: str, tags: list[str]) -> list[str]:
    """Retired web containers, one per tag, oldest first; returns their names."""
    names = []
    for i, tag in enumerate(tags):
        svc = web(image("registry.test/web", tag))
        name = managed.container_name(ENV, "web", managed.ROLE_RETIRED, managed.config_hash(svc))
        cid = world.hosts[host].run_container(svc, ENV, f"r-{tag}", name, state="exited")
        world.hosts[host].containers[cid].finished_at = f"2026-01-0{i + 1}T00:00:00Z"
        names.append(name)
    return names


def test_retention_prunes_beyond_keep_retired_oldest_first():
    world = running(web())
    names = _retired(world, "h1", ["a", "b", "c", "d", "e"])
    plan = world.plan(environment(web(), keep_retired=3), "r1")
    assert plan.actions == (Prune("h1", "web", "keep the newest 3 retired", containers=(names[1], names[0])),)


def test_retention_keeps_room_for_the_container_this_deploy_retires():
    world = running(web())
    names = _retired(world, "h1", ["a", "b", "c"])
    plan = world.plan(environment(web(V2), keep_retired=3), "r2")
    assert [a for a in plan.actions if isinstance(a, Prune)] == [
        Prune("h1", "web", "keep the newest 3 retired", containers=(names[0],))
    ]


def test_retention_never_prunes_the_name_this_deploy_retires_into():
    # v1 -> v2 -> v1 -> v2: the v1 container retires into the name its older
    # v1 twin has (prod-web-old-<hash of v1>), replacing it.  Pruning that
    # name after the switch would delete the rollback target just made.
    world = World(*HOSTS)
    h1 = world.hosts["h1"]
    h1.run_container(web(V1), ENV, "r3", "prod-web")
    older_v1, v2 = _retired(world, "h1", ["v1", "v2"])
    older_v1_name = managed.container_name(ENV, "web", managed.ROLE_RETIRED, managed.config_hash(web(V1)))
    assert older_v1 == older_v1_name
    plan = world.plan(environment(web(V2, hosts=("h1",)), keep_retired=1), "r4")
    assert [a for a in plan.actions if isinstance(a, Prune)] == [Prune("h1", "web", "keep the newest 1 retired", containers=(v2,))]


# ---------------------------------------------------------------- order, batches, strategy


def test_dependencies_deploy_first():
    api = replace(web(image("registry.test/api", "1"), hosts=("h1",)), name="api", depends_on=("db",))
    db = replace(web(DB, hosts=("h1",)), name="db")
    plan = World(*HOSTS).plan(environment(api, db), "r1")
    starts = [a.service for a in plan.actions if isinstance(a, Start)]
    assert starts == ["db", "api"]
    assert plan.actions == tuple(
        pulls("db", DB, ("h1",)) + pulls("api", api.image, ("h1",)) + start_first("db", DB, ("h1",)) + start_first("api", api.image, ("h1",))
    )


def test_batch_size_two_over_three_hosts_is_two_batches():
    svc = web(V2, rollout=Rollout(batch_size=2))
    plan = running(web()).plan(environment(svc), "r2")
    assert plan.actions == tuple(pulls("web", V2, HOSTS) + start_first("web", V2, ("h1", "h2"), 0) + start_first("web", V2, ("h3",), 1))


def test_ports_mean_stop_first_retire_before_start_and_no_switch():
    ports = (PortMapping(8080, 80),)
    svc = web(V2, ports=ports, rollout=Rollout(batch_size=2))
    plan = running(web(ports=ports)).plan(environment(svc), "r2")
    expected = pulls("web", V2, HOSTS)
    for index, batch in enumerate((("h1", "h2"), ("h3",))):
        expected += [Retire(h, "web", "free the host port for the new version", batch=index) for h in batch]
        expected += [Start(h, "web", f"run {V2}", batch=index, beside=False) for h in batch]
        expected += [CheckHealth(h, "web", "http check", batch=index, beside=False) for h in batch]
    assert plan.actions == tuple(expected)


def test_stop_first_create_has_nothing_to_retire():
    svc = web(ports=(PortMapping(8080, 80),), hosts=("h1",))
    plan = World(*HOSTS).plan(environment(svc), "r1")
    assert plan.actions == tuple(
        pulls("web", V1, ("h1",))
        + [Start("h1", "web", f"run {V1}", batch=0, beside=False), CheckHealth("h1", "web", "http check", batch=0, beside=False)]
    )


def test_explicit_strategy_overrides_auto():
    svc = web(V2, ports=(PortMapping(8080, 80, host_ip="10.0.0.1"),), rollout=Rollout(strategy="start-first"), hosts=("h1",))
    plan = running(web(ports=svc.ports), hosts=("h1",)).plan(environment(svc), "r2")
    assert plan.actions == tuple(pulls("web", V2, ("h1",)) + start_first("web", V2, ("h1",)))


def test_planning_is_deterministic():
    world = running(web())
    assert world.plan(environment(web(V2)), "r2") == world.plan(environment(web(V2)), "r2")


def test_removed_service_with_prune_takes_its_retired_containers_too():
    world = running(web())
    names = _retired(world, "h1", ["a"])
    plan = world.plan(environment(prune=True), "r2")
    removed = {a.container for a in plan.actions if isinstance(a, Remove) and a.host == "h1"}
    assert removed >= {"prod-web", *names}


def test_unobserved_images_are_ensured_in_preflight_not_assumed():
    # The real driver does not list images (a drift check needs only the
    # containers): every host to deploy gets a pre-flight Pull, which the
    # executor skips where the image is already present.
    from dataclasses import replace

    world = World(*HOSTS)
    observed = {h: replace(o, images=None) for h, o in world.observe().items()}
    plan = plan_deploy(environment(web()), observed, "r1")
    assert [(a.host, a.reason) for a in plan.actions if isinstance(a, Pull)] == [
        (h, f"make sure {V1} is on {h}") for h in HOSTS
    ]
