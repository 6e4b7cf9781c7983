"""The engine against in-memory hosts and a real git repository: every
operation takes the same lock, keeps the same journal, and writes the same
typed record.  Assertions are on the end state: hosts, notes, branch, status."""

from __future__ import annotations

import dataclasses

from agentrepo import commit, files_for
from reconciler.adapters import gitlog
from reconciler.adapters import githistory
from reconciler.adapters.journal import Journal, read_status
from reconciler.adapters.locks import Locks
from reconciler.engine.run import Request, reconcile, run
from reconciler.errors import HostUnreachable
from test_agent_reconcile import BAD, V1, V2, context, repo, serving, world  # noqa: F401  (fixtures)
from agentrepo import DIGEST2, DIGEST3


def cli(tmp_path, world, **request):
    return run(context(tmp_path, world), Request("staging", trigger="cli", actor="ann@box (cli)", **request))


def test_a_cli_deploy_is_locked_journaled_and_noted_with_who_asked(tmp_path, world, repo):
    c1 = commit(repo, files_for(), "web v1")
    result = cli(tmp_path, world, commit=c1)
    assert result.result == "deployed" and serving(world) == (str(V1), "running")
    (attempt,) = gitlog.attempts(repo, c1, "staging")
    assert (attempt.result, attempt.trigger, attempt.actor) == ("deployed", "cli", "ann@box (cli)")
    assert [(s.host, s.image) for s in attempt.serving][-1] == ("h1", str(V1))
    assert Journal(tmp_path / "state", "staging").load().phase == "finished"
    # The agent's next look finds it applied: no second claim that it deployed it.
    again = reconcile(context(tmp_path, world), "staging", reason="start")
    assert again.result == "in-sync" and len(gitlog.attempts(repo, c1, "staging")) == 1


def test_a_freeze_stops_the_cli_as_it_stops_the_agent(tmp_path, world, repo):
    c1 = commit(repo, files_for(), "web v1")
    Locks(tmp_path / "state").freeze("staging", "release freeze", by="ops")
    result = cli(tmp_path, world, commit=c1)
    assert (result.result, result.kind) == ("frozen", "waiting") and "release freeze" in result.message
    assert serving(world) is None and gitlog.attempts(repo, c1, "staging") == ()


def test_the_rollback_lever_commits_what_runs_so_the_agent_does_not_undo_it(tmp_path, world, repo):
    c1 = commit(repo, files_for(), "web v1")
    reconcile(context(tmp_path, world), "staging")
    commit(repo, files_for(DIGEST2, tag="v2"), "web v2")
    reconcile(context(tmp_path, world), "staging")
    assert serving(world) == (str(V2), "running")
    result = cli(tmp_path, world, operation="rollback")
    assert result.result == "rolled-back" and serving(world) == (str(V1), "running")
    head = gitlog.branch_head(repo, "refs/heads/main")
    assert head == result.new_commit and repo[head].message.startswith(f"Roll back staging to {c1[:12]}")
    (attempt,) = gitlog.attempts(repo, head, "staging")
    assert (attempt.operation, attempt.result, attempt.actor) == ("rollback", "rolled-back", "ann@box (cli)")
    assert read_status(tmp_path / "state", "staging").last_applied == head
    after = reconcile(context(tmp_path, world), "staging")
    assert after.result == "in-sync" and serving(world) == (str(V1), "running")


def test_the_rollback_lever_refuses_whole_when_a_host_has_no_target(tmp_path, world, repo):
    commit(repo, files_for(), "web v1")
    reconcile(context(tmp_path, world), "staging")
    result = cli(tmp_path, world, operation="rollback")
    assert (result.result, result.reason) == ("refused", "RollbackRefused") and serving(world) == (str(V1), "running")
    head = gitlog.branch_head(repo, "refs/heads/main")
    assert gitlog.latest(repo, head, "staging").operation == "rollback"


def test_an_error_before_any_change_is_noted_once_per_commit_and_reason(tmp_path, world, repo):
    commit(repo, files_for(), "web v1")
    reconcile(context(tmp_path, world), "staging")
    c2 = commit(repo, files_for(DIGEST2, tag="v2"), "web v2")

    def unreachable(environment, pins):
        raise HostUnreachable("connect: timed out after 10s", host="h1")

    ctx = dataclasses.replace(context(tmp_path, world), open_hosts=unreachable)
    for _ in range(3):
        result = reconcile(ctx, "staging", reason="retry")
        assert (result.result, result.kind, result.reason) == ("error", "transient", "HostUnreachable")
    (noted,) = gitlog.attempts(repo, c2, "staging")
    assert noted.result == "error" and "h1: connect: timed out" in noted.message
    assert reconcile(context(tmp_path, world), "staging").result == "deployed"
    assert [a.result for a in gitlog.attempts(repo, c2, "staging")] == ["error", "deployed"]


def test_a_never_healthy_release_is_recorded_per_host_while_it_served(tmp_path, world, repo):
    commit(repo, files_for(ports=True), "web v1")  # stop-first: the host serves the new release while it is checked
    reconcile(context(tmp_path, world), "staging")
    bad = commit(repo, files_for(DIGEST3, tag="v3", ports=True), "web v3")
    assert reconcile(context(tmp_path, world), "staging").result == "rolled-back"
    (attempt,) = gitlog.attempts(repo, bad, "staging")
    timeline = [(s.image, s.state) for s in attempt.serving if s.host == "h1"]
    assert (None, "exited") in timeline or any(image is None for image, _ in timeline)  # retired: nothing served
    assert (str(BAD), "running") in timeline  # then the broken release ran
    assert timeline[-1] == (str(V1), "running")  # and the old one is back
    broken_at = next(s.at for s in attempt.serving if s.image == str(BAD))
    assert githistory.running_at(repo, "staging", broken_at)[("h1", "web")].image == str(BAD)
    assert githistory.running_at(repo, "staging", attempt.finished)[("h1", "web")].image == str(V1)


def test_a_lever_killed_at_any_journal_step_never_leaves_a_record_that_lies(tmp_path):
    """Kill `reconciler rollback` at every journal write; the agent's next run
    converges, and git's record matches what the host runs then."""
    from fakes import World
    from test_agent_reconcile import Killed, _fresh_world

    def setup(base):
        world = _fresh_world()
        repo = init_repo(base)
        commit(repo, files_for(), "web v1")
        reconcile(context(base, world), "staging")
        commit(repo, files_for(DIGEST2, tag="v2"), "web v2")
        reconcile(context(base, world), "staging")
        return world, repo

    base = tmp_path / "count"
    world, repo = setup(base)
    writes: list[str] = []
    run(dataclasses.replace(context(base, world), journal_hook=writes.append), Request("staging", "rollback", trigger="cli"))
    assert len(writes) > 4
    for n in range(1, len(writes) + 1):
        base = tmp_path / f"kill{n}"
        world, repo = setup(base)
        count = [0]

        def kill(what, n=n):
            count[0] += 1
            if count[0] == n:
                raise Killed(what)

        try:
            run(dataclasses.replace(context(base, world), journal_hook=kill), Request("staging", "rollback", trigger="cli"))
        except Killed:
            pass
        Locks(base / "state").release("staging")  # the kernel would have: same pid here
        result = reconcile(context(base, world), "staging")
        assert Journal(base / "state", "staging").unfinished() is None, n
        running = serving(world)
        head = gitlog.branch_head(repo, "refs/heads/main")
        frozen = Locks(base / "state").frozen("staging")
        levers = [a for entry in githistory.history(repo, env="staging") for a in entry.attempts if a.operation == "rollback"]
        if running == (str(V1), "running"):
            # The lever took effect: git says so (its commit) or the environment is frozen saying why.
            assert frozen is not None or repo[head].message.startswith("Roll back staging"), (n, result)
            assert [a.result for a in levers] == ["rolled-back"], n
        else:
            assert running == (str(V2), "running"), (n, running)
            assert all(a.result != "rolled-back" for a in levers), (n, levers)


def init_repo(base):
    from agentrepo import init

    return init(base / "env.git", bare=True)
