"""One reconcile against in-memory hosts and a real git repository:
deploys, health failures (note, revert, not retried), crashes at every
journal step.  Assertions are on the end state: hosts, notes, branch."""

from __future__ import annotations

import pytest

from agentrepo import DIGEST1, DIGEST2, DIGEST3, commit, files_for, init
from fakes import NEVER_OK, World
from reconciler.adapters import gitlog
from reconciler.adapters import githistory
from reconciler.adapters.journal import Journal, read_status
from reconciler.adapters.locks import Locks
from reconciler.core.model import ImageRef
from reconciler.engine.run import Context, reconcile

REPO = "registry.example:5000/demo/web"
V1 = ImageRef.parse(f"{REPO}:v1@{DIGEST1}")
V2 = ImageRef.parse(f"{REPO}:v2@{DIGEST2}")
BAD = ImageRef.parse(f"{REPO}:v3@{DIGEST3}")


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the product may catch it."""


@pytest.fixture
def world():
    w = World("h1")
    w.registry.publish(V1)
    w.registry.publish(V2)
    w.registry.publish(BAD, NEVER_OK, logs="panic: no config")
    return w


@pytest.fixture
def repo(tmp_path):
    return init(tmp_path / "env.git", bare=True)


def context(tmp_path, world, hook=None) -> Context:
    return Context(
        repo=tmp_path / "env.git",
        state_dir=tmp_path / "state",
        open_hosts=lambda environment, pins: world.hosts,
        journal_hook=hook,
        executor_options={"clock": world.clock, "sleep": world.clock.sleep},
    )


def serving(world) -> tuple[str, str] | None:
    return world.active("staging", "web")["h1"]


def test_a_commit_deploys_and_is_noted(tmp_path, world, repo):
    c1 = commit(repo, files_for(), "web v1")
    result = reconcile(context(tmp_path, world), "staging")
    assert (result.result, result.kind) == ("deployed", None)
    assert serving(world) == (str(V1), "running")
    note = gitlog.latest(repo, c1, "staging")
    assert note.result == "deployed" and dict(note.digests) == {"web": str(V1)} and note.hosts == ("h1",)
    assert read_status(tmp_path / "state", "staging").last_applied == c1
    again = reconcile(context(tmp_path, world), "staging")
    assert again.result == "in-sync"


def test_a_never_healthy_commit_is_rolled_back_reverted_and_not_retried(tmp_path, world, repo):
    c1 = commit(repo, files_for(), "web v1")
    reconcile(context(tmp_path, world), "staging")
    bad = commit(repo, files_for(DIGEST3, tag="v3"), "web v3", author=("Bob", "bob@x"))
    result = reconcile(context(tmp_path, world), "staging")
    assert (result.result, result.kind, result.reason) == ("rolled-back", "stalled", "HealthCheckFailed")
    assert serving(world) == (str(V1), "running")
    note = gitlog.latest(repo, bad, "staging")
    assert note.result == "rolled-back" and note.failed_check[0] == "h1"
    assert any("panic: no config" in e for e in note.evidence)
    head = gitlog.branch_head(repo, "refs/heads/main")
    assert head == result.revert_commit and f"This reverts commit {bad}" in repo[head].message
    # The revert commit is what runs: it deploys as in sync and is noted.
    after = reconcile(context(tmp_path, world), "staging")
    assert after.result == "in-sync" and gitlog.latest(repo, head, "staging").result == "in-sync"
    assert githistory.running_at(repo, "staging", 10**12)[("h1", "web")].image == str(V1)
    assert c1 != head


def test_with_on_failure_note_the_failed_commit_stays_and_is_not_retried(tmp_path, world, repo):
    commit(repo, files_for(on_failure="note"), "v1")
    reconcile(context(tmp_path, world), "staging")
    bad = commit(repo, files_for(DIGEST3, tag="v3", on_failure="note"), "v3")
    assert reconcile(context(tmp_path, world), "staging").result == "rolled-back"
    assert gitlog.branch_head(repo, "refs/heads/main") == bad
    creates = world.hosts["h1"].calls.get("create", 0)
    skipped = reconcile(context(tmp_path, world), "staging")
    assert (skipped.result, skipped.kind) == ("skipped", "stalled")
    assert world.hosts["h1"].calls.get("create", 0) == creates
    fixed = commit(repo, files_for(DIGEST2, tag="v2", on_failure="note"), "v2")
    assert reconcile(context(tmp_path, world), "staging").result == "deployed"
    assert serving(world) == (str(V2), "running") and gitlog.latest(repo, fixed, "staging").result == "deployed"


def test_skipped_commits_are_recorded_as_superseded(tmp_path, world, repo):
    commit(repo, files_for(), "v1")
    reconcile(context(tmp_path, world), "staging")
    middle = commit(repo, files_for(DIGEST3, tag="v3"), "v3")
    newest = commit(repo, files_for(DIGEST2, tag="v2"), "v2")
    result = reconcile(context(tmp_path, world), "staging")
    assert result.result == "deployed" and result.superseded == (middle,)
    assert gitlog.latest(repo, middle, "staging").superseded_by == newest


def test_a_frozen_environment_waits(tmp_path, world, repo):
    commit(repo, files_for(), "v1")
    Locks(tmp_path / "state").freeze("staging", "incident 42", by="ops")
    result = reconcile(context(tmp_path, world), "staging")
    assert (result.result, result.kind) == ("frozen", "waiting") and "incident 42" in result.message
    assert serving(world) is None


def test_invalid_desired_state_is_stalled_with_a_note(tmp_path, world, repo):
    bad = commit(repo, {**files_for(), "environments/staging/environment.yaml": "hosts: [\n"}, "broken")
    result = reconcile(context(tmp_path, world), "staging")
    assert (result.result, result.kind, result.reason) == ("failed", "stalled", "InvalidDesiredState")
    assert "environment.yaml:" in gitlog.latest(repo, bad, "staging").message


def _journal_writes(tmp_path, world_factory, ports: bool, digest=DIGEST2, tag="v2") -> int:
    """How many journal writes a clean deploy of v1 -> v2 makes."""
    seen = []
    w = world_factory()
    base = tmp_path / "count"
    r = init(base / "env.git", bare=True)
    commit(r, files_for(ports=ports), "v1")
    reconcile(context(base, w), "staging")
    commit(r, files_for(digest, tag=tag, ports=ports), "v2")
    reconcile(context(base, w, hook=seen.append), "staging")
    return len(seen)


def _fresh_world():
    w = World("h1")
    w.registry.publish(V1)
    w.registry.publish(V2)
    w.registry.publish(BAD, NEVER_OK)
    return w


@pytest.mark.parametrize("ports", [False, True], ids=["start-first", "stop-first"])
@pytest.mark.parametrize("target", ["healthy", "never-healthy"])
def test_a_kill_at_any_journal_step_then_a_restart_converges(tmp_path, ports, target):
    digest, tag = (DIGEST2, "v2") if target == "healthy" else (DIGEST3, "v3")
    want = V2 if target == "healthy" else V1
    writes = _journal_writes(tmp_path, _fresh_world, ports, digest, tag)
    assert writes > 5
    for n in range(1, writes + 1):
        base = tmp_path / f"kill{n}"
        world = _fresh_world()
        repo = init(base / "env.git", bare=True)
        commit(repo, files_for(ports=ports), "v1")
        assert reconcile(context(base, world), "staging").result == "deployed"
        pushed = commit(repo, files_for(digest, tag=tag, ports=ports), "v2")
        count = [0]

        def kill(what, n=n):
            count[0] += 1
            if count[0] == n:
                raise Killed(what)

        with pytest.raises(Killed):
            reconcile(context(base, world, hook=kill), "staging")
        Locks(base / "state").release("staging")  # the kernel would have: same pid here
        result = reconcile(context(base, world), "staging")
        if result.result == "in-sync" and target != "healthy":
            pass  # the revert commit, reconciled
        assert serving(world) == (str(want), "running"), (n, result)
        assert Journal(base / "state", "staging").unfinished() is None, n
        names = set(world.hosts["h1"].snapshot())
        assert "staging-web-next" not in names, (n, names)
        if target == "healthy":
            assert gitlog.latest(repo, pushed, "staging").result == "deployed", n
        else:
            assert gitlog.latest(repo, pushed, "staging").result == "rolled-back", n
            head = gitlog.branch_head(repo, "refs/heads/main")
            assert head != pushed and f"This reverts commit {pushed}" in repo[head].message, n
