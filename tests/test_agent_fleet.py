"""The agent on the real fleet: a git push deploys; a never-healthy push is
rolled back, reverted, noted and not retried; SIGKILL at every journal step
of a deploy, then a restart, converges."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from tests.agentproc import AgentProcess
from tests.envrepo import make_env_repo, remove_containers, serving
from tests.pushing import git, wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def service(image: str, port: int) -> str:
    return f"""
    web:
      image: {image}
      hosts: all
      ports: ["{port}:8080"]
      health: {{type: http, path: /health, interval: 500ms, successes: 2, deadline: 8s}}
      rollout: {{batch_size: 3}}
      stop_timeout: 2s
    """


@pytest.fixture
def setup(fleet, tmp_path, request):
    name = "a" + request.node.name.replace("test_", "").replace("_", "")[:10]
    work = make_env_repo(tmp_path / "work", fleet, name)
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    git(work.path, "remote", "add", "origin", str(bare))
    yield work, bare
    remove_containers(fleet, f"{name}-")


def test_push_deploys_and_a_never_healthy_push_is_reverted_not_retried(fleet, setup, tmp_path):
    work, bare = setup
    port = 18301
    work.commit(service(fleet.images["v1"], port), message="web v1")
    git(work.path, "push", "-q", "origin", "main")
    agent = AgentProcess(bare, work.env, work.identity, tmp_path / "agent.log").start()
    try:
        assert wait_for(lambda: set(serving(fleet, port).values()) == {"demo-web v1"}), (tmp_path / "agent.log").read_text()
        work.commit(service(fleet.images["v2"], port), message="web v2")
        pushed = time.monotonic()
        git(work.path, "push", "-q", "origin", "main")
        assert wait_for(lambda: set(serving(fleet, port).values()) == {"demo-web v2"}), (tmp_path / "agent.log").read_text()
        print(f"push returned -> v2 serving everywhere in {time.monotonic() - pushed:.1f}s")

        bad = work.commit(service(fleet.images["v3-unhealthy"], port), message="web v3")
        git(work.path, "push", "-q", "origin", "main")
        repo = pygit2.Repository(str(bare))
        assert wait_for(lambda: getattr(gitlog.latest(repo, bad, work.env), "result", None) == "rolled-back"), (tmp_path / "agent.log").read_text()
        assert serving(fleet, port) == {h.name: "demo-web v2" for h in fleet.hosts}
        head = wait_for(lambda: gitlog.branch_head(repo, "refs/heads/main") if gitlog.branch_head(repo, "refs/heads/main") != bad else None)
        assert f"This reverts commit {bad}" in repo[head].message
        time.sleep(5)
        log = (tmp_path / "agent.log").read_text()
        assert log.count(f'"commit": "{bad[:12]}", "reason": "trigger"') <= 1 or log.count("step-begin") < 100
        assert serving(fleet, port) == {h.name: "demo-web v2" for h in fleet.hosts}
    finally:
        agent.stop()


KILLER = """
import os, signal, sys
from reconciler.adapters import fleet
from reconciler.engine.run import Context, fleet_opener, reconcile
n = int(sys.argv[4]); count = [0]
def hook(what):
    count[0] += 1
    if count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
ctx = Context(repo=sys.argv[1], state_dir=sys.argv[2], open_hosts=fleet_opener(sys.argv[3]), close_hosts=fleet.close_hosts, journal_hook=hook)
print(reconcile(ctx, sys.argv[5]))
"""


def test_sigkill_at_every_journal_step_then_restart_converges(fleet, setup, tmp_path):
    work, bare = setup
    port = 18302
    state = tmp_path / "state"
    work.commit(service(fleet.images["v1"], port), message="web v1")
    run = lambda n: subprocess.run([sys.executable, "-c", KILLER, str(work.path), str(state), work.identity, str(n), work.env], capture_output=True, text=True)
    first = run(0).stdout
    assert "'deployed'" in first or "'in-sync'" in first, first  # in sync: a previous session's containers
    versions = ["v1", "v2"]  # n=1 deploys v2, then they alternate
    for n in range(1, 40):
        want = versions[n % 2]
        work.commit(service(fleet.images[want], port), message=f"web {want} kill {n}")
        killed = run(n)
        if killed.returncode != -signal.SIGKILL:
            assert "deployed" in killed.stdout, killed
            break  # the deploy has fewer journal writes than n: every step was covered
        after = run(0)
        assert "deployed" in after.stdout or "in-sync" in after.stdout, (n, after.stdout, after.stderr)
        assert serving(fleet, port) == {h.name: f"demo-web {want}" for h in fleet.hosts}, n
    else:
        pytest.fail("a deploy never finished within 40 journal writes")


def test_pushes_during_a_slow_deploy_coalesce_into_one_reconcile_of_the_newest(fleet, setup, tmp_path):
    work, bare = setup
    port = 18303
    work.commit(service(fleet.images["v1"], port), message="web v1")
    git(work.path, "push", "-q", "origin", "main")
    log = tmp_path / "agent.log"
    agent = AgentProcess(bare, work.env, work.identity, log).start()
    slow = service(fleet.images["v2"], port).replace("successes: 2", "successes: 6").replace("batch_size: 3", "batch_size: 1")
    try:
        assert wait_for(lambda: set(serving(fleet, port).values()) == {"demo-web v1"}), log.read_text()
        first = work.commit(slow, message="web v2, slow to prove healthy")
        git(work.path, "push", "-q", "origin", "main")
        agent.wait_for_event("reconcile-begin", timeout=30, commit=first[:12])  # the slow deploy is under way
        middle = work.commit(service(fleet.images["v1"], port), message="back to v1")
        git(work.path, "push", "-q", "origin", "main")
        newest = work.commit(service(fleet.images["v2"], port) + "\n  # newest\n", message="v2 again, newest")
        git(work.path, "push", "-q", "origin", "main")
        repo = pygit2.Repository(str(bare))
        assert wait_for(lambda: getattr(gitlog.latest(repo, newest, work.env), "result", None) in ("deployed", "in-sync"), timeout=120), log.read_text()
        assert getattr(gitlog.latest(repo, first, work.env), "result", None) == "deployed"
        assert getattr(gitlog.latest(repo, middle, work.env), "result", None) == "superseded"
        assert serving(fleet, port) == {h.name: "demo-web v2" for h in fleet.hosts}
        # The middle commit was never deployed: no reconcile began for it.
        assert f'"commit": "{middle[:12]}", "reason"' not in log.read_text()
    finally:
        agent.stop()
