"""Mirroring, holding and maintenance planned and run on in-memory hosts and routers (``routerfakes``).

The same invariants as tests/test_bluegreen.py hold at every router change
(no request without a server, none to an unhealthy container), and the
router's map entries say what is in effect, so a killed run resumes.
"""

from __future__ import annotations

import pytest

from reconciler.core import model
from reconciler.core.model import Expose
from reconciler.errors import ReconcilerError
from routerfakes import Killed
from test_bluegreen import HOSTS, V1, V2, backend, environment, server, steps, web, world  # noqa: F401

MIRRORED = Expose(8080, ("web.test",), drain=5.0, mirror=model.Mirror(25, 20.0))


def run(world, img, revision, expose=MIRRORED, **kw):
    env = environment(web(img, expose=expose))
    plan = world.plan(env, revision)
    return plan, world.executor(env, revision, **kw).apply(plan)


def test_a_deploy_mirrors_to_green_after_it_is_up_and_before_the_switch(world):
    run(world, V1, "r1")
    world.routers["h1"].applied.clear()
    plan, outcome = run(world, V2, "r2")
    assert outcome.result == "deployed", outcome.failure
    h1 = steps(plan, "h1")
    at = h1.index("StartMirror")
    assert h1[at - 1] == "WaitUp" and h1[at:at + 4] == ["StartMirror", "WaitMirror", "StopMirror", "SetWeights"], h1
    applied = world.routers["h1"].applied
    assert applied.index("WaitUp") < applied.index("StartMirror") < applied.index("StopMirror") < applied.index("SetWeights")
    green = world.routers["h1"].servers_[("web", server(V2))]
    assert world.routers["h1"].maps_["mirror"] == {"web": f"0@{green.address}:8080"}  # stopped, for green
    assert world.violations == []


def test_a_first_deploy_has_nothing_to_mirror_from(world):
    plan, outcome = run(world, V1, "r1")
    assert outcome.result == "deployed" and "StartMirror" not in steps(plan, "h1")


@pytest.mark.parametrize("killed_at", ["WaitMirror", "StopMirror"])
def test_a_run_killed_while_mirroring_waits_again_then_switches(world, killed_at):
    run(world, V1, "r1")
    world.routers["h2"].kill_at = (killed_at, 1)
    with pytest.raises(Killed):
        run(world, V2, "r2")
    world.routers["h2"].kill_at = None
    plan, outcome = run(world, V2, "r2")
    assert outcome.result == "deployed", outcome.failure
    h2 = steps(plan, "h2")
    # The router shows the mirror running, not how long it ran: the wait is done again (here
    # without the dead run's journal, whole; with it, what is left: tests/test_mirror_resume.py),
    # then the mirror stopped, then the switch.
    assert h2[:4] == ["Adopt", "WaitMirror", "StopMirror", "SetWeights"], h2
    for h in HOSTS:
        assert backend(world, h) == {server(V2): (100, True)}, h
    assert world.violations == []


def test_maintenance_and_pause_follow_the_desired_state(world):
    run(world, V1, "r1", expose=Expose(8080, ("web.test",)))
    plan, outcome = run(world, V1, "r2", expose=Expose(8080, ("web.test",), maintenance=model.Maintenance("<p>x</p>"),
                                                       pause=model.Pause(12.0)))
    assert outcome.result == "deployed", outcome.failure
    assert [s for s in steps(plan, "h1") if s != "Configure"] == ["MaintenanceOn", "HoldRequests"]
    assert world.routers["h1"].maps_ == {"maintenance": {"web": "on"}, "hold": {"web": "12000"}}
    plan, outcome = run(world, V1, "r3", expose=Expose(8080, ("web.test",)))
    assert [s for s in steps(plan, "h1") if s != "Configure"] == ["MaintenanceOff", "ReleaseRequests"]
    assert world.routers["h1"].maps_ == {"maintenance": {}, "hold": {}}
    assert world.plan(environment(web(V1, expose=Expose(8080, ("web.test",)))), "r3").in_sync


class FailingDatabase:
    def __init__(self, world) -> None:
        self.world = world
        self.held_at_run: list[dict] = []

    def run(self, action) -> None:
        self.held_at_run.append({h: dict(r.maps_.get("hold", {})) for h, r in self.world.routers.items()})
        raise ReconcilerError(f"{action.step}: the backup could not be verified")


def test_a_database_pause_holds_during_the_database_steps_and_releases_on_their_failure(world):
    from reconciler.core import traffic
    from reconciler.core.plan import Plan
    from reconciler.core.plan_steps import Backup

    run(world, V1, "r1", expose=Expose(8080, ("web.test",)))
    env = environment(web(V2, expose=Expose(8080, ("web.test",), database_pause=model.Pause(20.0))))
    observed = world.observe()
    plan = world.plan(env, "r2")
    # The planner wraps a database phase in holds (here one added by hand: no database in this fake).
    actions = traffic.around_database(env, observed, [Backup("", "", "verified backup", database="db")])
    plan = Plan(plan.environment, plan.revision, tuple(actions) + plan.actions, plan.changes, plan.findings)
    assert [a.step for a in plan.actions[:7]] == ["HoldRequests"] * 3 + ["Backup"] + ["ReleaseRequests"] * 3
    database = FailingDatabase(world)
    with pytest.raises(ReconcilerError, match="backup could not be verified"):
        world.executor(env, "r2", database=database).apply(plan)
    assert database.held_at_run == [{h: {"web": "20000"} for h in HOSTS}]  # held while the database step ran
    assert all(r.maps_.get("hold") == {} for r in world.routers.values())  # and released after its failure
    assert all(backend(world, h) == {server(V1): (100, True)} for h in HOSTS)  # nothing else changed


def test_a_deploy_that_fails_while_mirroring_stops_the_mirror_with_the_switch_back(world):
    run(world, V1, "r1")
    world.routers["h1"].fail_at = ("StopMirror", 1)  # the router refuses to stop it in the deploy
    plan, outcome = run(world, V2, "r2")
    assert outcome.result == "rolled-back" and "injected refusal" in outcome.failure
    assert world.routers["h1"].maps_["mirror"]["web"].startswith("0@")  # stopped by the rollback
    assert all(backend(world, h) == {server(V1): (100, True)} for h in HOSTS)
    assert world.violations == []
