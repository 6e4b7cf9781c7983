"""One state location for the agent, the unit and the CLI (issue 10, item 7):
the resolver's order, the agent's pointer, and the agent's view in status."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import time

import pygit2
import pytest

from reconciler.adapters.journal import Status, write_status
from reconciler.adapters.locks import Locks
from reconciler.cli.commands import _agent, status
from reconciler.cli.main import main
from reconciler.errors import LockHeld, StalledError


@pytest.fixture
def bare(tmp_path):
    path = tmp_path / "env.git"
    pygit2.init_repository(str(path), bare=True, initial_head="main")
    return path


@pytest.fixture
def shell_env(monkeypatch):
    """A user's shell: none of the agent's variables."""
    for name in list(os.environ):
        if name.startswith("RECONCILER_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)


def resolve(bare, explicit=None, **environ):
    return _agent.resolve_state(_agent.git_dir(str(bare)), explicit=explicit, environ=environ)


def test_the_order_is_flag_env_systemd_pointer_default(bare, tmp_path):
    for d in ("flag", "env", "unit", "pointed"):
        (tmp_path / d).mkdir()
    gdir = _agent.git_dir(str(bare))
    assert resolve(bare).path == gdir / "reconciler"
    assert "default" in resolve(bare).source
    _agent.publish_state(gdir, _agent.StateLocation(tmp_path / "pointed", "$STATE_DIRECTORY"))
    assert resolve(bare).path == tmp_path / "pointed"
    assert str(gdir / "reconciler-state") in resolve(bare).source
    assert resolve(bare, STATE_DIRECTORY=f"{tmp_path / 'unit'}:/var/lib/other").path == tmp_path / "unit"
    assert resolve(bare, RECONCILER_STATE=str(tmp_path / "env"), STATE_DIRECTORY=str(tmp_path / "unit")).path == tmp_path / "env"
    assert resolve(bare, str(tmp_path / "flag"), RECONCILER_STATE=str(tmp_path / "env")).path == tmp_path / "flag"


def test_a_pointer_to_a_state_directory_that_is_gone_is_an_error_naming_both(bare, tmp_path):
    gdir = _agent.git_dir(str(bare))
    _agent.publish_state(gdir, _agent.StateLocation(tmp_path / "gone", "$STATE_DIRECTORY"))
    (tmp_path / "gone" / "locks").rmdir()
    (tmp_path / "gone").rmdir()
    with pytest.raises(StalledError, match=r"reconciler-state: names the agent's state directory .*gone, which does not exist"):
        resolve(bare)


def test_the_agent_under_the_unit_publishes_its_state_for_shells(bare, tmp_path, shell_env, monkeypatch):
    unit_state = tmp_path / "var-lib" / "reconciler"
    unit_state.mkdir(parents=True)
    monkeypatch.setenv("STATE_DIRECTORY", str(unit_state))
    assert _agent.state_dir(argparse.Namespace(repo=str(bare), state=None)) == unit_state  # what `reconciler run` calls at start
    monkeypatch.delenv("STATE_DIRECTORY")
    pointer = _agent.git_dir(str(bare)) / "reconciler-state"
    assert stat.S_IMODE(pointer.stat().st_mode) == 0o644  # pushers read it
    assert _agent.read_pointer(_agent.git_dir(str(bare)))["pid"] == os.getpid()
    assert stat.S_IMODE((unit_state / "locks").stat().st_mode) == 0o2770  # pushers may freeze
    assert resolve(bare).path == unit_state


def test_lock_from_a_shell_freezes_the_agent_that_published_its_state(bare, tmp_path, shell_env, capsys):
    unit_state = tmp_path / "var-lib" / "reconciler"
    unit_state.mkdir(parents=True)
    _agent.publish_state(_agent.git_dir(str(bare)), _agent.StateLocation(unit_state, "$STATE_DIRECTORY"))
    assert main(["lock", "--repo", str(bare), "prod", "--reason", "release freeze", "--by", "alice"]) == 0
    out = capsys.readouterr().out
    assert "prod: frozen by alice" in out and str(unit_state) in out
    freeze_file = unit_state / "locks" / "prod.freeze"
    assert stat.S_IMODE(freeze_file.stat().st_mode) == 0o644  # the agent's user reads it
    with pytest.raises(LockHeld, match="frozen by alice"):
        Locks(unit_state).acquire("prod", "c" * 40)  # what the agent's reconcile does first
    assert not (_agent.git_dir(str(bare)) / "reconciler" / "locks" / "prod.freeze").exists()

    assert main(["lock", "--repo", str(bare)]) == 0
    assert "prod: FROZEN by alice" in capsys.readouterr().out
    assert main(["unlock", "--repo", str(bare), "prod"]) == 0
    assert "unfrozen (was frozen by alice: release freeze)" in capsys.readouterr().out
    assert Locks(unit_state).acquire("prod", "c" * 40).commit == "c" * 40


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_agent_view_shows_status_freeze_and_the_reconcile_running_now(bare, tmp_path):
    state = tmp_path / "state"
    gdir = _agent.git_dir(str(bare))
    location = _agent.StateLocation(state, "$STATE_DIRECTORY")
    _agent.publish_state(gdir, location)
    write_status(state, Status("prod", last_attempted="b" * 40, last_applied="a" * 40, stalled_commit="b" * 40,
                               result="rolled-back", reason="HealthCheckFailed", message="web /health 500 on h2\nmore", at=1e9))
    locks = Locks(state)
    locks.freeze("prod", "incident 42", "bob@ops")
    locks.dir.joinpath("prod.lock").write_text(
        '{"environment": "prod", "pid": %d, "host": "%s", "commit": "%s", "started": 1000000000, "heartbeat": %f}'
        % (os.getpid(), locks.hostname, "c" * 40, time.time()))

    view = status.agent_view(gdir, _agent.resolve_state(gdir, environ={}), "prod")
    text = status.agent_view_text(view)
    assert f"agent (state {state} (recorded by the agent in {gdir / 'reconciler-state'})):" in text
    assert f"pid {os.getpid()} on {locks.hostname}" in text and "(running)" in text
    assert "freeze:         FROZEN by bob@ops since " in text and ": incident 42" in text
    assert f"reconciling:    {'c' * 12} since 2001-09-09T01:46:40Z, pid {os.getpid()} on {locks.hostname}" in text
    assert "(stale" not in text
    assert f"last attempted: {'b' * 12} (rolled-back, HealthCheckFailed, at 2001-09-09T01:46:40Z)" in text
    assert f"last applied:   {'a' * 12}" in text
    assert f"stalled:        {'b' * 12}: HealthCheckFailed: web /health 500 on h2" in text
    doc = status.agent_view_json(view)
    assert doc["frozen"]["reason"] == "incident 42" and doc["reconciling"]["commit"] == "c" * 40
    assert doc["last_applied"] == "a" * 40 and doc["stalled_commit"] == "b" * 40 and doc["state_dir"] == str(state)


def test_a_quiet_environment_and_a_dead_holder_read_plainly(bare, tmp_path):
    state = tmp_path / "state"
    gdir = _agent.git_dir(str(bare))
    locks = Locks(state)
    locks.dir.mkdir(parents=True)
    locks.dir.joinpath("prod.lock").write_text(
        '{"environment": "prod", "pid": %d, "host": "%s", "commit": "%s", "started": 1, "heartbeat": 1}'
        % (dead_pid(), locks.hostname, "d" * 40))
    text = status.agent_view_text(status.agent_view(gdir, _agent.StateLocation(state, "--state"), "prod"))
    assert "freeze:         none" in text
    assert "(stale: its agent is gone)" in text
    assert "last attempted: none" in text and "last applied:   none" in text and "stalled:        none" in text
    assert "  agent:" not in text  # no agent recorded this location
