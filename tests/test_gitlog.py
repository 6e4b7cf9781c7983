"""Git as the deployment log, on real repositories made with pygit2."""

from __future__ import annotations

import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.adapters import gitedit
from reconciler.adapters import githistory
from reconciler.core.record import Attempt, Serving
from agentrepo import DIGEST1, DIGEST2, commit, env_yaml, files_for, init, read


def note(repo, commit_id, env, result, digests=None, **fields):
    gitlog.append_attempt(repo, Attempt(env, commit_id, result, digests=tuple(sorted((digests or {}).items())), **fields))


@pytest.fixture
def repo(tmp_path):
    return init(tmp_path / "repo", bare=True)


def test_a_note_has_a_summary_first_and_json_after(repo):
    c1 = commit(repo, files_for(), "first")
    note(repo, c1, "staging", "deployed", hosts=("h1",), started=10.0, finished=12.5, actor="agent a:1")
    message = repo.lookup_note(c1, gitlog.NOTES_REF).message
    assert message.startswith(f"reconciler: staging deployed {c1[:12]} on h1 at 1970-01-01T00:00:12Z (2.5s) by agent a:1\n\n{{")
    assert gitlog.latest(repo, c1, "staging").result == "deployed"


def test_notes_of_two_environments_on_one_commit_merge(repo):
    c1 = commit(repo, {**files_for(env="staging"), **files_for(env="production")})
    note(repo, c1, "staging", "deployed")
    note(repo, c1, "production", "rolled-back", message="health check failed\nmore")
    assert {a.environment: a.result for a in gitlog.attempts(repo, c1)} == {"staging": "deployed", "production": "rolled-back"}
    first_lines = repo.lookup_note(c1, gitlog.NOTES_REF).message.split("\n\n")[0].splitlines()
    assert first_lines[1].startswith("reconciler: production rolled-back") and first_lines[1].endswith(": health check failed")


def test_attempts_are_appended_and_an_outcome_is_never_overwritten(repo):
    c1 = commit(repo, files_for(), "first")
    note(repo, c1, "staging", "refused", reason="MigrationRefused", message="0002_x.expand.sql:3: DROP COLUMN", finished=5.0)
    # Coalescing later finds the commit skipped: it has an outcome, so it is not marked superseded.
    assert gitlog.mark_superseded(repo, "staging", [c1], "f" * 40, 9.0) == []
    note(repo, c1, "staging", "deployed", finished=20.0, trigger="cli", actor="ann@box (cli)")
    found = gitlog.attempts(repo, c1, "staging")
    assert [(a.result, a.reason) for a in found] == [("refused", "MigrationRefused"), ("deployed", "")]
    assert found[0].message == "0002_x.expand.sql:3: DROP COLUMN" and found[1].actor == "ann@box (cli)"


def test_a_version_1_note_reads_as_one_attempt(repo):
    c1 = commit(repo, files_for(), "first")
    v1 = ('reconciler: staging deployed\n\n{"reconciler": 1, "environments": {"staging": {"result": "deployed", '
          '"finished": 12, "digests": {"web": "r/web:v1"}, "running": {"h1/web": {"image": "r/web:v1", "state": "running"}}}}}')
    sig = gitlog.agent_signature()
    repo.create_note(v1, sig, sig, c1, gitlog.NOTES_REF, True)
    (old,) = gitlog.attempts(repo, c1, "staging")
    assert old.result == "deployed" and old.image_of("web") == "r/web:v1"
    assert githistory.running_at(repo, "staging", 13)[("h1", "web")].image == "r/web:v1"
    note(repo, c1, "staging", "in-sync", finished=30.0)
    assert [a.result for a in gitlog.attempts(repo, c1, "staging")] == ["deployed", "in-sync"]


def test_branch_of_an_environment(repo):
    commit(repo, files_for())
    assert gitlog.environment_branch(repo, "staging") == "refs/heads/main"
    commit(repo, files_for(), branch="refs/heads/staging")
    assert gitlog.environment_branch(repo, "staging") == "refs/heads/staging"
    repo.config["reconciler.staging.branch"] = "release"
    assert gitlog.environment_branch(repo, "staging") == "refs/heads/release"


def test_superseded_marks_only_unnoted_commits_between(repo):
    a = commit(repo, files_for(), "a")
    b = commit(repo, files_for(tag="v2"), "b")
    c = commit(repo, files_for(tag="v3"), "c")
    d = commit(repo, files_for(tag="v4"), "d")
    note(repo, c, "staging", "failed")
    assert gitlog.commits_between(repo, a, d) == [c, b]
    assert gitlog.mark_superseded(repo, "staging", gitlog.commits_between(repo, a, d), d, 50.0) == [b]
    assert gitlog.latest(repo, b, "staging").superseded_by == d
    assert [x.result for x in gitlog.attempts(repo, c, "staging")] == ["failed"]


def test_revert_after_a_failed_deploy_restores_only_that_environment(repo):
    base = commit(repo, {**files_for(env="staging"), **files_for(env="production")}, "base")
    failed = commit(
        repo,
        {"environments/staging/environment.yaml": env_yaml(DIGEST2, tag="v2"), "environments/production/environment.yaml": env_yaml(tag="p2")},
        "web v2 everywhere",
        author=("Bob", "bob@example.com"),
    )
    new = gitlog.revert_failed(repo, env="staging", branch_ref="refs/heads/main", failed=failed, base=base, why="failed the web http check on h1")
    assert gitlog.branch_head(repo, "refs/heads/main") == new
    c = repo[new]
    assert c.author.name == "reconciler agent" and c.parents[0].id == pygit2.Oid(hex=failed)
    assert f"This reverts commit {failed}" in c.message and "web http check on h1" in c.message
    assert c.message.startswith('Revert "web v2 everywhere" in staging')
    assert read(repo, new, "environments/staging/environment.yaml") == env_yaml()
    assert read(repo, new, "environments/production/environment.yaml") == env_yaml(tag="p2")


def test_no_revert_when_the_branch_moved_on_or_nothing_changed(repo):
    base = commit(repo, files_for(), "base")
    failed = commit(repo, files_for(tag="v2"), "v2")
    newer = commit(repo, files_for(tag="v3"), "v3")
    assert gitlog.revert_failed(repo, env="staging", branch_ref="refs/heads/main", failed=failed, base=base, why="failed") is None
    assert gitlog.branch_head(repo, "refs/heads/main") == newer
    same = commit(repo, {"README": "docs only"}, "docs")
    assert gitlog.revert_failed(repo, env="staging", branch_ref="refs/heads/main", failed=same, base=newer, why="failed") is None


def test_history_says_who_wrote_who_merged_what_changed_and_the_outcome(repo):
    c1 = commit(repo, files_for(), "first", when=1000)
    c2 = commit(repo, files_for(tag="v2"), "second", author=("Bob", "bob@x"), committer=("Merger", "m@x"), when=2000)
    commit(repo, {"README": "x"}, "docs", when=3000)
    v1, v2 = "r/web:v1", "r/web:v2"
    note(repo, c1, "staging", "deployed", started=1001, finished=1002, services_changed=("web",),
         serving=(Serving(1001.5, "h1", "web", v1, "c1"), Serving(1001.8, "h2", "web", v1, "c1b")))
    # A rolling deploy: h1 served v2 for a while before the rollback put v1 back; h2 never changed.
    note(repo, c2, "staging", "rolled-back", started=2001, finished=2060,
         serving=(Serving(2005, "h1", "web", v2, "c2"), Serving(2045, "h1", "web", None, "c2", "exited"),
                  Serving(2046, "h1", "web", v1, "c1")))
    entries = githistory.history(repo, env="staging")
    assert [e.commit for e in entries] == [c2, c1]  # the docs commit does not concern staging
    assert entries[0].author == "Bob <bob@x>" and entries[0].committer == "Merger <m@x>"
    assert entries[0].changed == ("environments/staging/environment.yaml",)
    assert entries[0].attempts[0].result == "rolled-back"
    assert [e.commit for e in githistory.history(repo, env="staging", service="web")] == [c1]
    at = lambda t: {k: s.image for k, s in githistory.running_at(repo, "staging", t).items()}  # noqa: E731
    assert at(1500) == {("h1", "web"): v1, ("h2", "web"): v1}
    assert at(2020) == {("h1", "web"): v2, ("h2", "web"): v1}  # per host: h1 ran the broken release then
    assert at(2045.5) == {("h1", "web"): None, ("h2", "web"): v1}
    assert at(2500) == {("h1", "web"): v1, ("h2", "web"): v1}
    assert at(999) == {}


def test_proven_image_is_the_last_healthy_deploy(repo):
    c1 = commit(repo, files_for(), "first")
    c2 = commit(repo, files_for(DIGEST2, tag="v2"), "second")
    note(repo, c1, "staging", "deployed", finished=5, digests={"web": f"r/web:v1@{DIGEST1}"})
    note(repo, c2, "staging", "rolled-back", finished=9, digests={"web": f"r/web:v2@{DIGEST2}"})
    image, proof = githistory.proven_image(repo, "staging", "web")
    assert image == f"r/web:v1@{DIGEST1}" and proof.commit == c1


def test_parse_time():
    assert githistory.parse_time("1970-01-01T00:01:00Z") == 60.0
    assert githistory.parse_time("60") == 60.0
    assert githistory.parse_time("1970-01-01T01:01:00+01:00") == 60.0


def test_promote_copies_the_proven_digest_keeping_comments(repo, capsys):
    from reconciler.cli.main import main

    base = commit(repo, {**files_for(env="staging"), **files_for(env="production")}, "both v1")
    staged = commit(repo, files_for(DIGEST2, tag="v2", env="staging"), "staging v2")
    note(repo, staged, "staging", "deployed", finished=7, digests={"web": f"registry.example:5000/demo/web:v2@{DIGEST2}"})
    assert main(["promote", "web", "--from", "staging", "--to", "production", "--repo", repo.path]) == 0
    head = gitlog.branch_head(repo, "refs/heads/main")
    text = read(repo, head, "environments/production/environment.yaml")
    assert text == env_yaml(DIGEST2, tag="v2")  # every comment and blank line where it was
    assert repo[head].message.startswith("Promote web to production: v2 (sha256:222222222222)")
    assert f"proven healthy in staging at {staged}" in repo[head].message
    assert base != head


def test_promote_refuses_what_never_ran_healthy(repo):
    commit(repo, {**files_for(env="staging"), **files_for(env="production")}, "v1")
    with pytest.raises(Exception, match="no healthy deploy"):
        gitedit.promote(repo, "web", "staging", "production")


def test_revert_is_an_ordinary_commit_keeping_the_file_as_written(repo):
    commit(repo, files_for(), "v1")
    bad = commit(repo, files_for(DIGEST2, tag="v2"), "v2")
    commit(repo, {"README": "x"}, "docs")
    new = gitedit.revert(repo, bad, "refs/heads/main")
    assert read(repo, new, "environments/staging/environment.yaml") == env_yaml()
    assert read(repo, new, "README") == "x"
    assert repo[new].message == f'Revert "v2"\n\nThis reverts commit {bad}.\n'


def test_history_command_prints_the_log_and_what_ran_at_a_moment(repo, capsys):
    from reconciler.cli.main import main

    c1 = commit(repo, files_for(), "web v1", when=1000)
    note(repo, c1, "staging", "deployed", started=1001, finished=1002, digests={"web": "r/web:v1"},
         serving=(Serving(1002, "h1", "web", "r/web:v1", "abc123"),))
    c2 = commit(repo, files_for(DIGEST2, tag="v2"), "web v2", when=2000, committer=("Merger", "m@x"))
    note(repo, c2, "staging", "rolled-back", started=2001, finished=2002, message="health check failed", reason="HealthCheckFailed")
    assert main(["history", "--repo", repo.path, "--env", "staging"]) == 0
    out = capsys.readouterr().out
    assert f"{c2[:12]} web v2" in out and "merged by Merger <m@x>" in out and "staging: rolled-back" in out
    assert "health check failed" in out and "changed: environments/staging/environment.yaml" in out
    assert main(["history", "--repo", repo.path, "--env", "staging", "--at", "1970-01-01T00:40:00Z"]) == 0
    assert "h1/web: r/web:v1 container abc123" in capsys.readouterr().out


def test_healthy_since_is_the_start_of_the_current_image_streak(repo):
    v1, v2 = f"r/web:v1@{DIGEST1}", f"r/web:v2@{DIGEST2}"
    c1 = commit(repo, files_for(), "v1")
    c2 = commit(repo, files_for(DIGEST2, tag="v2"), "v2")
    c3 = commit(repo, files_for(DIGEST2, tag="v2") | {"README": "allow contract"}, "allow_contract only")
    note(repo, c1, "staging", "deployed", finished=10, digests={"web": v1})
    note(repo, c2, "staging", "deployed", finished=20, digests={"web": v2})
    note(repo, c3, "staging", "in-sync", finished=30, digests={"web": v2})
    assert githistory.healthy_since(repo, "staging", "web", v2) == 20  # not 30: the flag commit kept v2
    assert githistory.healthy_since(repo, "staging", "web", v1) is None  # v1 is not what runs now
