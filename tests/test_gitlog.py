"""Git as the deployment log, on real repositories made with pygit2."""

from __future__ import annotations

import pygit2
import pytest

from reconciler.adapters import gitlog
from agentrepo import DIGEST1, DIGEST2, commit, env_yaml, files_for, init, read


@pytest.fixture
def repo(tmp_path):
    return init(tmp_path / "repo", bare=True)


def test_a_note_has_a_summary_first_and_json_after(repo):
    c1 = commit(repo, files_for(), "first")
    gitlog.write_note(repo, c1, "staging", {"result": "deployed", "hosts": ["h1"], "started": 10.0, "finished": 12.5})
    message = repo.lookup_note(c1, gitlog.NOTES_REF).message
    assert message.startswith(f"reconciler: staging deployed {c1[:12]} on h1 at 1970-01-01T00:00:12Z (2.5s)\n\n{{")
    assert gitlog.env_record(repo, c1, "staging")["result"] == "deployed"


def test_notes_of_two_environments_on_one_commit_merge(repo):
    c1 = commit(repo, {**files_for(env="staging"), **files_for(env="production")})
    gitlog.write_note(repo, c1, "staging", {"result": "deployed"})
    gitlog.write_note(repo, c1, "production", {"result": "rolled-back", "failure": "health check failed\nmore"})
    doc = gitlog.read_note(repo, c1)
    assert {k: v["result"] for k, v in doc["environments"].items()} == {"staging": "deployed", "production": "rolled-back"}
    first_lines = repo.lookup_note(c1, gitlog.NOTES_REF).message.split("\n\n")[0].splitlines()
    assert first_lines[0].startswith("reconciler: production rolled-back") and first_lines[0].endswith(": health check failed")


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
    gitlog.write_note(repo, c, "staging", {"result": "failed"})
    assert gitlog.commits_between(repo, a, d) == [c, b]
    assert gitlog.mark_superseded(repo, "staging", gitlog.commits_between(repo, a, d), d, 50.0) == [b]
    assert gitlog.env_record(repo, b, "staging")["superseded_by"] == d
    assert gitlog.env_record(repo, c, "staging")["result"] == "failed"


def test_revert_after_a_failed_deploy_restores_only_that_environment(repo):
    base = commit(repo, {**files_for(env="staging"), **files_for(env="production")}, "base")
    failed = commit(
        repo,
        {"environments/staging/environment.yaml": env_yaml(DIGEST2, tag="v2"), "environments/production/environment.yaml": env_yaml(tag="p2")},
        "web v2 everywhere",
        author=("Bob", "bob@example.com"),
    )
    new = gitlog.revert_failed(repo, env="staging", branch_ref="refs/heads/main", failed=failed, base=base, check="web http", host="h1")
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
    assert gitlog.revert_failed(repo, env="staging", branch_ref="refs/heads/main", failed=failed, base=base, check="c", host="h") is None
    assert gitlog.branch_head(repo, "refs/heads/main") == newer
    same = commit(repo, {"README": "docs only"}, "docs")
    assert gitlog.revert_failed(repo, env="staging", branch_ref="refs/heads/main", failed=same, base=newer, check="c", host="h") is None


def test_history_says_who_wrote_who_merged_what_changed_and_the_outcome(repo):
    c1 = commit(repo, files_for(), "first", when=1000)
    c2 = commit(repo, files_for(tag="v2"), "second", author=("Bob", "bob@x"), committer=("Merger", "m@x"), when=2000)
    commit(repo, {"README": "x"}, "docs", when=3000)
    gitlog.write_note(repo, c1, "staging", {"result": "deployed", "started": 1001, "finished": 1002, "services_changed": ["web"]})
    gitlog.write_note(repo, c2, "staging", {"result": "rolled-back", "started": 2001, "finished": 2002})
    entries = gitlog.history(repo, env="staging")
    assert [e.commit for e in entries] == [c2, c1]  # the docs commit does not concern staging
    assert entries[0].author == "Bob <bob@x>" and entries[0].committer == "Merger <m@x>"
    assert entries[0].changed == ("environments/staging/environment.yaml",)
    assert entries[0].records[0]["result"] == "rolled-back"
    assert [e.commit for e in gitlog.history(repo, env="staging", service="web")] == [c1]
    assert gitlog.running_at(repo, "staging", 2500)["commit"] == c1  # the rollback left c1 running
    assert gitlog.running_at(repo, "staging", 999) is None


def test_proven_image_is_the_last_healthy_deploy(repo):
    c1 = commit(repo, files_for(), "first")
    c2 = commit(repo, files_for(DIGEST2, tag="v2"), "second")
    gitlog.write_note(repo, c1, "staging", {"result": "deployed", "finished": 5, "digests": {"web": f"r/web:v1@{DIGEST1}"}})
    gitlog.write_note(repo, c2, "staging", {"result": "rolled-back", "finished": 9, "digests": {"web": f"r/web:v2@{DIGEST2}"}})
    image, record = gitlog.proven_image(repo, "staging", "web")
    assert image == f"r/web:v1@{DIGEST1}" and record["commit"] == c1


def test_parse_time():
    assert gitlog.parse_time("1970-01-01T00:01:00Z") == 60.0
    assert gitlog.parse_time("60") == 60.0
    assert gitlog.parse_time("1970-01-01T01:01:00+01:00") == 60.0


def test_promote_copies_the_proven_digest_keeping_comments(repo, capsys):
    from reconciler.cli.main import main

    base = commit(repo, {**files_for(env="staging"), **files_for(env="production")}, "both v1")
    staged = commit(repo, files_for(DIGEST2, tag="v2", env="staging"), "staging v2")
    gitlog.write_note(repo, staged, "staging", {"result": "deployed", "finished": 7, "digests": {"web": f"registry.example:5000/demo/web:v2@{DIGEST2}"}})
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
        gitlog.promote(repo, "web", "staging", "production")


def test_revert_is_an_ordinary_commit_keeping_the_file_as_written(repo):
    commit(repo, files_for(), "v1")
    bad = commit(repo, files_for(DIGEST2, tag="v2"), "v2")
    commit(repo, {"README": "x"}, "docs")
    new = gitlog.revert(repo, bad, "refs/heads/main")
    assert read(repo, new, "environments/staging/environment.yaml") == env_yaml()
    assert read(repo, new, "README") == "x"
    assert repo[new].message == f'Revert "v2"\n\nThis reverts commit {bad}.\n'


def test_history_command_prints_the_log_and_what_ran_at_a_moment(repo, capsys):
    from reconciler.cli.main import main

    c1 = commit(repo, files_for(), "web v1", when=1000)
    gitlog.write_note(repo, c1, "staging", {"result": "deployed", "started": 1001, "finished": 1002, "digests": {"web": "r/web:v1"}})
    c2 = commit(repo, files_for(DIGEST2, tag="v2"), "web v2", when=2000, committer=("Merger", "m@x"))
    gitlog.write_note(repo, c2, "staging", {"result": "rolled-back", "started": 2001, "finished": 2002, "failure": "health check failed"})
    assert main(["history", "--repo", repo.path, "--env", "staging"]) == 0
    out = capsys.readouterr().out
    assert f"{c2[:12]} web v2" in out and "merged by Merger <m@x>" in out and "staging rolled-back" in out
    assert "health check failed" in out and "changed: environments/staging/environment.yaml" in out
    assert main(["history", "--repo", repo.path, "--env", "staging", "--at", "1970-01-01T00:40:00Z"]) == 0
    assert f"ran {c1[:12]}" in capsys.readouterr().out


def test_healthy_since_is_the_start_of_the_current_image_streak(repo):
    v1, v2 = f"r/web:v1@{DIGEST1}", f"r/web:v2@{DIGEST2}"
    c1 = commit(repo, files_for(), "v1")
    c2 = commit(repo, files_for(DIGEST2, tag="v2"), "v2")
    c3 = commit(repo, files_for(DIGEST2, tag="v2") | {"README": "allow contract"}, "allow_contract only")
    gitlog.write_note(repo, c1, "staging", {"result": "deployed", "finished": 10, "digests": {"web": v1}})
    gitlog.write_note(repo, c2, "staging", {"result": "deployed", "finished": 20, "digests": {"web": v2}})
    gitlog.write_note(repo, c3, "staging", {"result": "deployed", "finished": 30, "digests": {"web": v2}})
    assert gitlog.healthy_since(repo, "staging", "web", v2) == 20  # not 30: the flag commit kept v2
    assert gitlog.healthy_since(repo, "staging", "web", v1) is None  # v1 is not what runs now
