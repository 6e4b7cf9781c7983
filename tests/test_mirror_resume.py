"""A run killed while mirroring: the resumed run mirrors for what is left of the window, not a whole one.

In-memory hosts and routers (``routerfakes``), one host at a time
(``parallel_hosts: 1``) so the shared fake clock moves deterministically.
The dead run's events stand for its journal records (the journal keeps
every event the executor reports); ``core.mirror_resume`` reads them.
"""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.core import model
from reconciler.core import traffic
from reconciler.core.mirror_resume import resumed_mirrors, windows
from reconciler.core.model import Expose, Policy
from routerfakes import Killed
from test_bluegreen import HOSTS, V1, V2, backend, environment, server, web, world  # noqa: F401

WINDOW = 20.0
MIRRORED = Expose(8080, ("web.test",), drain=5.0, mirror=model.Mirror(25, WINDOW))


def env_with(img, expose=MIRRORED):
    env = environment(web(img, expose=expose, batch_size=len(HOSTS)))  # every host mirrors at once
    return dataclasses.replace(env, policy=Policy(parallel_hosts=1))


def record_mirror_steps(world) -> list[tuple[str, str, float, float]]:
    """(host, step, seconds asked, fake clock) of every mirror step the routers get from now on."""
    seen: list[tuple[str, str, float, float]] = []
    for host, router in world.routers.items():
        def apply(step, *, persist=True, _router=router, _host=host, _apply=router.apply):
            if isinstance(step, (traffic.StartMirror, traffic.WaitMirror, traffic.StopMirror)):
                seen.append((_host, step.step, getattr(step, "seconds", 0.0), world.clock()))
            return _apply(step, persist=persist)
        router.apply = apply
    return seen


def killed_run(world, at: str) -> list[dict]:
    """r2 (mirrored) killed before ``at`` on every host; the events it reported."""
    env = env_with(V2)
    events: list[dict] = []
    for router in world.routers.values():
        router.kill_at = (at, 1)
    with pytest.raises(Killed):
        world.executor(env, "r2", report=lambda e, **f: events.append({"event": e, "at": world.clock(), **f}),
                       wall=world.clock).apply(world.plan(env, "r2"))
    for router in world.routers.values():
        router.kill_at = None
    return events


def resume(world, events: list[dict]):
    env = env_with(V2)
    plan = resumed_mirrors(world.plan(env, "r2"), events)
    return plan, world.executor(env, "r2", wall=world.clock).apply(plan)


def test_a_run_killed_mid_window_mirrors_only_what_is_left_of_it(world):
    env = env_with(V1, expose=Expose(8080, ("web.test",), drain=5.0))
    assert world.executor(env, "r1").apply(world.plan(env, "r1")).result == "deployed"
    events = killed_run(world, "WaitMirror")  # mirroring on every host, none waited yet
    began = windows(events)
    assert sorted(h for h, *_ in began) == list(HOSTS), events
    world.clock.sleep(5.0)  # the agent comes back 5 s later
    seen = record_mirror_steps(world)
    plan, outcome = resume(world, events)
    assert outcome.result == "deployed", outcome.failure
    waits = [a for a in plan.actions if isinstance(getattr(a, "route", None), traffic.WaitMirror)]
    assert all(a.route.since and "what is left" in a.reason for a in waits), waits
    for host in HOSTS:
        since = next(s for (h, *_), s in began.items() if h == host)
        stopped = next(t for h, step, _, t in seen if h == host and step == "StopMirror")
        # Mirrored WINDOW seconds in all, across the two runs: not 5 + WINDOW.
        assert stopped - since == pytest.approx(WINDOW, abs=0.01), (host, since, stopped, seen)
        assert backend(world, host) == {server(V2): (100, True)}, host
    assert sum(s for _, step, s, _ in seen if step == "WaitMirror") == pytest.approx(WINDOW - 5.0, abs=0.01), seen
    assert world.violations == []


def test_a_run_killed_after_its_window_stops_the_mirror_at_once(world):
    env = env_with(V1, expose=Expose(8080, ("web.test",), drain=5.0))
    world.executor(env, "r1").apply(world.plan(env, "r1"))
    events = killed_run(world, "StopMirror")  # every window waited, none stopped
    seen = record_mirror_steps(world)
    _, outcome = resume(world, events)
    assert outcome.result == "deployed", outcome.failure
    assert sorted((h, step, s) for h, step, s, _ in seen) == [(h, step, 0.0) for h in HOSTS
                                                              for step in ("StopMirror", "WaitMirror")], seen


def test_a_window_of_another_green_or_a_run_killed_twice(world):
    env = env_with(V1, expose=Expose(8080, ("web.test",), drain=5.0))
    world.executor(env, "r1").apply(world.plan(env, "r1"))
    events = killed_run(world, "WaitMirror")
    first = windows(events)
    # Killed again, at once, in the resumed run: its own events carry the first window's start.
    world.clock.sleep(3.0)
    again: list[dict] = []
    for router in world.routers.values():
        router.kill_at = ("StopMirror", 1)
    plan = resumed_mirrors(world.plan(env_with(V2), "r2"), events)
    with pytest.raises(Killed):
        world.executor(env_with(V2), "r2", report=lambda e, **f: again.append({"event": e, **f}),
                       wall=world.clock).apply(plan)
    assert windows(again) == first
    # A wait for another green (another server name) is a window of its own.
    other = [dict(r, server="web-other") if r["event"] == "mirror" else r for r in events]
    for router in world.routers.values():
        router.kill_at = None
    plan = resumed_mirrors(world.plan(env_with(V2), "r2"), other)
    assert plan == world.plan(env_with(V2), "r2")
