"""The agent's schedule with a fake reconcile and a fake clock: coalescing,
no retry of a failed commit, backoff of transient faults, drift timer."""

from __future__ import annotations

import io
import json
import threading

from reconciler.agent.loop import EnvLoop, Timing, backoff, make_logger
from reconciler.engine.run import Result


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Git:
    """A branch whose head the test moves."""

    def __init__(self, head="c1"):
        self.head = head

    def __call__(self, env):
        return self.head


def loop_with(results, git, clock, on_call=None, timing=Timing(drift_interval=60)):
    calls = []

    def reconcile(env, reason):
        head = git.head  # what a real reconcile resolves first and reports
        calls.append((head, reason))
        if on_call:
            on_call(len(calls))
        kind, result = results(head) if callable(results) else results.pop(0)
        return Result(env, head, result, kind)

    loop = EnvLoop("prod", reconcile, git, timing=timing, clock=clock, rand=lambda a, b: b)
    return loop, calls


def test_triggers_during_a_deploy_coalesce_into_one_reconcile_of_the_newest():
    clock, git = Clock(), Git("c1")
    loop = None

    def pushes_arrive(n):
        if n == 1:  # three pushes land while the first deploy runs
            for head in ("c2", "c3", "c4"):
                git.head = head
                loop.trigger(f"push:{head}")

    loop, calls = loop_with(lambda head: (None, "deployed"), git, clock, on_call=pushes_arrive)
    loop.trigger("push:c1")
    git.head = "c1"
    loop.step()
    loop.step()
    assert loop.step() is None  # nothing left
    assert [c for c, _ in calls] == ["c1", "c4"]


def test_a_commit_that_failed_health_is_not_retried_until_a_new_commit():
    clock, git = Clock(), Git("bad")
    loop, calls = loop_with(lambda head: ("stalled", "rolled-back") if head == "bad" else (None, "deployed"), git, clock)
    loop.step()  # start-up look
    assert loop.due is None  # no timer: drift would redeploy the failed commit
    loop.trigger("ref:refs/heads/main")
    assert loop.step() is None
    clock.now += 10_000
    assert loop.step() is None
    git.head = "fixed"
    loop.trigger("push")
    loop.step()
    assert calls == [("bad", "start"), ("fixed", "push")]


def test_transient_faults_are_retried_with_growing_backoff():
    clock, git = Clock(), Git("c1")
    loop, calls = loop_with([("transient", "error")] * 3 + [(None, "deployed")], git, clock, timing=Timing(drift_interval=60, backoff_base=2))
    delays = []
    for _ in range(4):
        before = clock.now
        loop.step()
        if loop.due is not None:
            delays.append(loop.due - before)
            clock.now = loop.due
    assert delays == [2.0, 4.0, 8.0, 60.0]  # then the drift interval once healthy
    assert len(calls) == 4 and calls[-1][1] == "retry"


def test_the_drift_check_runs_on_its_interval_and_nudges_without_news_do_not():
    clock, git = Clock(), Git("c1")
    loop, calls = loop_with(lambda head: (None, "in-sync"), git, clock)
    loop.step()
    loop.trigger("ref:refs/notes/reconciler")
    assert loop.step() is None
    clock.now = 59
    assert loop.step() is None
    clock.now = 60
    loop.step()
    assert [r for _, r in calls] == ["start", "drift"]


def test_waiting_retries_after_a_while():
    clock, git = Clock(), Git("c1")
    loop, calls = loop_with([("waiting", "frozen"), (None, "deployed")], git, clock, timing=Timing(waiting_retry=30))
    loop.step()
    assert loop.due == 30
    loop.trigger("push:unfreeze")  # an unlock nudges: no need to wait for the timer
    loop.step()
    assert len(calls) == 2


def test_the_loop_blocks_idle_and_wakes_on_a_trigger():
    import time

    git = Git("c1")
    loop, calls = loop_with(lambda head: (None, "in-sync"), git, time.monotonic, timing=Timing(drift_interval=3600))
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while len(calls) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    git.head = "c2"
    start = time.process_time()
    loop.trigger("push")
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # idle: the loop thread must not spin
    loop.stop()
    thread.join(2)
    assert [c for c, _ in calls] == ["c1", "c2"]
    assert time.process_time() - start < 0.15


def test_backoff_is_capped_and_jittered():
    t = Timing(backoff_base=1, backoff_max=10)
    assert backoff(10, t, rand=lambda a, b: (a, b)) == (5.0, 10.0)
    assert backoff(1, t, rand=lambda a, b: (a, b)) == (0.5, 1.0)


def test_log_lines_name_environment_service_host_commit_and_mask_secrets():
    out = io.StringIO()
    log = make_logger("json", out, clock=lambda: 0)
    log("step-failed", environment="prod", host="h1", commit="abcdef1234567890", error="DB_PASSWORD=hunter2 refused")
    line = json.loads(out.getvalue())
    assert line["environment"] == "prod" and line["host"] == "h1" and line["service"] is None and line["commit"] == "abcdef123456"
    assert "hunter2" not in out.getvalue()
    out = io.StringIO()
    make_logger("text", out, clock=lambda: 0)("deploy", environment="prod", service="web")
    assert "environment=prod service=web host=- commit=-" in out.getvalue()
