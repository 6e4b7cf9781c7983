"""The traffic levers (``maintenance``, ``pause``, ``resume``) check the file
they edit with the product's own bounded parser (``core.schema``, as
``validate`` and the pre-receive hook do), before they edit it and after:
a branch head the schema refuses, or an edit that would make it refuse the
file, is reported as ``file:line:col`` and nothing is committed.  Run as a
user runs them (``reconciler pause ...``) on a repository with no hosts: a
refusal comes before the engine is needed."""

from __future__ import annotations

import pytest

from agentrepo import commit, init
from reconciler.cli.main import main
from reconciler.core import model
from schema_helpers import snapshot
from test_bluegreen_schema import ROUTER, web

ENV = "staging"
FILE = f"environments/{ENV}/environment.yaml"
GOOD = ("hosts:\n  h1: {address: 10.0.0.1, groups: [web]}\npolicy:\n  require_digest: true\n" + ROUTER
        + "services:\n" + web())


@pytest.fixture
def repo(tmp_path):
    repo = init(tmp_path / "env.git", bare=True)
    commit(repo, {FILE: GOOD, f"environments/{ENV}/known_hosts": "# pinned keys\n"}, "web behind the router")
    return repo


def head(repo) -> str:
    return str(repo.references["refs/heads/main"].target)


def lever(repo, *argv: str) -> int:
    return main([*argv, "--repo", repo.path, "--env", ENV, "--yes"])


@pytest.mark.parametrize("broken, where", [
    # An unknown field the round-trip loader would carry on: the schema refuses it.
    (GOOD.replace("port: 8080}", "port: 8080, colour: red}"), f"{FILE}:17:"),
    # A key written twice: the bounded parser sees both, at the second.
    (GOOD.replace("    hosts: [web]\n", "    hosts: [web]\n    hosts: [web]\n"), f"{FILE}:17:"),
], ids=["unknown-field", "duplicate-key"])
def test_a_branch_head_the_schema_refuses_is_named_and_nothing_is_committed(repo, capsys, broken, where):
    before = commit(repo, {FILE: broken}, "pushed past the hook")
    assert lever(repo, "pause", "web") != 0
    said = capsys.readouterr()
    assert where in said.out + said.err, said
    assert head(repo) == before


@pytest.mark.parametrize("argv, where", [
    (("pause", "web", "--deadline", "soon"), f"{FILE}:17:"),
    (("pause", "web", "--deadline", "2h"), f"{FILE}:17:"),  # over the schema's bound on a held request
], ids=["not-a-duration", "too-long"])
def test_an_edit_the_schema_would_refuse_is_named_and_nothing_is_committed(repo, capsys, argv, where):
    before = head(repo)
    assert lever(repo, *argv) != 0
    said = capsys.readouterr()
    assert where in said.out + said.err and "pause.deadline" in said.out + said.err, said
    assert head(repo) == before


def test_the_edit_changes_the_one_line_and_the_edited_file_validates(repo):
    from reconciler.cli.commands._traffic_lever import edit_expose
    from reconciler.core.schema import load_environment

    edited = edit_expose(GOOD, ("services", "web"), "pause", {"deadline": "30s"})
    changed = [(a, b) for a, b in zip(GOOD.splitlines(), edited.splitlines()) if a != b]
    assert len(GOOD.splitlines()) == len(edited.splitlines()) and len(changed) == 1, edited
    assert changed[0][1].endswith("port: 8080, pause: {deadline: 30s}}"), changed
    assert load_environment(snapshot(env=edited, name=ENV), ENV).service("web").expose.pause == model.Pause(30.0)
