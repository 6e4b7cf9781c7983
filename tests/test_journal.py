"""The journal and status files: atomic, readable after any crash."""

from __future__ import annotations

import json
import os

import pytest

from reconciler.adapters import journal as j


def test_atomic_write_leaves_old_content_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "doc.json"
    j.atomic_write_json(path, {"v": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        j.atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]  # no temp file left behind


def test_atomic_write_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")), real(fd)))
    j.atomic_write_json(tmp_path / "a.json", [1])
    assert str(tmp_path) in synced  # the directory, so the rename survives power loss
    assert len(synced) == 2


def test_a_run_records_every_step_and_its_touched_containers(tmp_path):
    seen = []
    journal = j.Journal(tmp_path, "staging", clock=lambda: 5.0, hook=seen.append)
    journal.begin("c1", previous_commit="c0")
    journal.record("begin", step="Start", host="h1", service="web")
    journal.set_touched([j.TouchedRecord("h1", "web", previous="old", new="new")])
    journal.record("done", step="Start", host="h1", service="web")
    state = journal.unfinished()
    assert state.commit == "c1" and state.previous_commit == "c0" and state.phase == j.PHASE_DEPLOYING
    assert state.touched == (j.TouchedRecord("h1", "web", "old", "new"),)
    assert state.steps_begun("Start") == {("h1", "web")} == state.steps_done("Start")
    assert seen == ["begin-run", "begin:Start", "touched", "done:Start"]


def test_a_finished_run_is_not_unfinished(tmp_path):
    journal = j.Journal(tmp_path, "staging")
    journal.begin("c1", previous_commit=None)
    journal.phase(j.PHASE_ROLLING_BACK, health=["h1", "web", "http"])
    assert journal.unfinished().health == ("h1", "web", "http")
    journal.phase(j.PHASE_FINISHED)
    assert journal.unfinished() is None
    assert journal.load().finished


def test_an_interrupted_run_can_be_adopted_and_continued(tmp_path):
    j.Journal(tmp_path, "prod").begin("c1", previous_commit=None, touched=[j.TouchedRecord("h", "s", "a", None)])
    again = j.Journal(tmp_path, "prod")
    again.adopt()
    again.phase(j.PHASE_RECORDING, result="rolled-back")
    state = again.load()
    assert state.phase == j.PHASE_RECORDING and state.touched[0].previous == "a"


def test_status_round_trips_and_defaults(tmp_path):
    assert j.read_status(tmp_path, "dev") == j.Status("dev")
    j.write_status(tmp_path, j.Status("dev", last_attempted="b", last_applied="a", stalled_commit="b", reason="HealthCheckFailed"))
    assert j.read_status(tmp_path, "dev").stalled_commit == "b"


def test_a_garbled_file_reads_as_absent(tmp_path):
    path = tmp_path / "journal" / "x.json"
    path.parent.mkdir()
    path.write_text("{not json")
    assert j.Journal(tmp_path, "x").load() is None
