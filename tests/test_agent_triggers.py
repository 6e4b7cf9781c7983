"""Triggers: the nudge socket and the ref watcher only enqueue."""

from __future__ import annotations

import queue
import subprocess

from agentrepo import commit, files_for, init
from reconciler.agent.triggers import NudgeSocket, RefWatcher, send_nudge


def test_a_nudge_reaches_the_listener_and_none_listening_is_reported(tmp_path):
    got: queue.Queue = queue.Queue()
    path = tmp_path / "a.sock"
    assert not send_nudge(path)
    listener = NudgeSocket(path, got.put).start()
    try:
        assert send_nudge(path, "refs/heads/main")
        assert got.get(timeout=5) == "push:refs/heads/main"
    finally:
        listener.stop()
    assert not path.exists()


def test_the_watcher_sees_a_commit_and_a_pack_refs_but_not_notes(tmp_path):
    repo = init(tmp_path / "env.git", bare=True)
    commit(repo, files_for(), "v1")
    got: queue.Queue = queue.Queue()
    watcher = RefWatcher(repo.path, got.put).start()
    try:
        repo.create_note("x", repo.default_signature, repo.default_signature, str(repo.head.target), "refs/notes/reconciler")
        commit(repo, files_for(tag="v2"), "v2")
        reason = got.get(timeout=5)
        assert reason.startswith("ref:refs/heads/main") or reason == "ref:HEAD", reason
        while not got.empty():
            got.get()
        subprocess.run(["git", "pack-refs", "--all"], cwd=repo.path, check=True)
        assert got.get(timeout=5) in ("ref:packed-refs", "ref:refs/heads/main")
    finally:
        watcher.stop()
    seen = []
    while not got.empty():
        seen.append(got.get())
    assert not any("notes" in s for s in seen)
