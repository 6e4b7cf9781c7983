"""What ``apply`` and ``rollback`` print when the engine is done: one summary
(``cli.commands._engine.print_result``), told apart only by the command's
name, its in-sync line and the lever's commit (or freeze)."""

from __future__ import annotations

import pytest

from reconciler.cli.commands._engine import print_result
from reconciler.core.model import Environment, Host
from reconciler.engine.executor import Outcome
from reconciler.engine.state import Result
from reconciler.engine.target import Target

ENV = Environment("prod", (Host("h1", "10.0.0.1"), Host("h2", "10.0.0.2")), ())
TARGET = Target(ENV, "a" * 40, None, "/dev/null", "/dev/null")


def printed(capsys, result: Result, operation: str) -> str:
    print_result(TARGET, result, operation)
    return capsys.readouterr().out


def outcome(result: str, failure: str | None = None, evidence=()) -> Outcome:
    return Outcome("prod", "a" * 40, result, failure=failure, evidence=list(evidence), started=10.0, finished=12.5)


def test_a_deploy_says_what_it_did_how_long_it_took_what_runs_and_where_it_is_recorded(capsys):
    out = printed(capsys, Result("prod", "a" * 40, "deployed", outcome=outcome("deployed"), observed={},
                                 unreachable=("h2",)), "deploy")
    assert out.splitlines()[0] == f"apply: prod @ {'a' * 12}: deployed in 2.5s"
    assert "now running:" in out
    assert "h2       UNREACHABLE: not observed after the apply" in out
    assert out.rstrip().endswith(f"recorded in git: note on {'a' * 12}")


def test_a_failed_deploy_shows_the_failure_its_evidence_and_the_revert(capsys):
    out = printed(capsys, Result("prod", "a" * 40, "rolled-back", revert_commit="b" * 40,
                                 outcome=outcome("rolled-back", "h1/web never turned healthy", ["logs of h1/web:\npanic"])),
                  "deploy")
    assert "apply: prod @ aaaaaaaaaaaa: rolled-back in 2.5s" in out
    assert "failure: h1/web never turned healthy\n  logs of h1/web:\n  panic\n" in out
    assert f"reverted by {'b' * 12}" in out
    assert "frozen" not in out  # only the lever freezes


def test_a_rollback_names_the_commit_that_makes_git_say_what_runs(capsys):
    out = printed(capsys, Result("prod", "a" * 40, "rolled-back", new_commit="c" * 40, outcome=outcome("deployed"),
                                 observed={}), "rollback")
    assert out.splitlines()[0] == f"rollback: prod @ {'a' * 12}: rolled-back in 2.5s"
    assert f"committed {'c' * 12}: the branch now says what prod runs" in out
    assert out.rstrip().endswith(f"recorded in git: note on {'c' * 12}")


def test_a_rollback_no_commit_could_describe_leaves_the_environment_frozen_and_says_so(capsys):
    out = printed(capsys, Result("prod", "a" * 40, "rolled-back", outcome=outcome("deployed")), "rollback")
    assert "prod is frozen: the hosts differ from the branch head; see `reconciler status`" in out


def test_a_failed_lever_without_an_outcome_shows_the_engines_message(capsys):
    out = printed(capsys, Result("prod", "a" * 40, "failed", message="h1: start web: the engine failed"), "rollback")
    assert "rollback: prod @ aaaaaaaaaaaa: failed\n" in out
    assert "failure: h1: start web: the engine failed" in out


@pytest.mark.parametrize("operation, line", [("deploy", "apply: nothing to change"),
                                             ("rollback", "rollback: every host already runs that version")])
def test_in_sync_says_so_shows_what_runs_and_records_nothing(capsys, operation, line):
    out = printed(capsys, Result("prod", "a" * 40, "in-sync", observed={}), operation)
    assert line in out and "now running:" in out
    assert "recorded in git" not in out


@pytest.mark.parametrize("operation, command", [("deploy", "apply"), ("rollback", "rollback")])
def test_declined_changes_nothing_and_says_only_that(capsys, operation, command):
    assert printed(capsys, Result("prod", "a" * 40, "declined", observed={}), operation) == \
        f"{command}: cancelled, nothing changed\n"
