"""Following a hosted environment repository: fetch and fast-forward, push
the agent's own commits and notes, the remote wins a divergence, and the
webhook pokes a fetch.  Real git repositories (pygit2), local file remotes."""

from __future__ import annotations

import threading
import time
import urllib.request

import pygit2
import pytest

from reconciler.agent import mirror
from reconciler.agent.triggers import Webhook

SIG = pygit2.Signature("someone", "someone@reconciler.invalid")


def commit(repo: pygit2.Repository, text: str, ref: str = "refs/heads/main") -> str:
    builder = repo.TreeBuilder()
    builder.insert("environment.yaml", repo.create_blob(text.encode()), pygit2.enums.FileMode.BLOB)
    parents = [repo.references[ref].target] if ref in repo.references else []
    return str(repo.create_commit(ref, SIG, SIG, text, builder.write(), parents))


@pytest.fixture
def repos(tmp_path):
    hosted = pygit2.init_repository(str(tmp_path / "hosted.git"), bare=True, initial_head="main")
    commit(hosted, "v1")
    local = pygit2.clone_repository(str(tmp_path / "hosted.git"), str(tmp_path / "agent.git"), bare=True)
    return hosted, local


def head(repo) -> str:
    return str(repo.references["refs/heads/main"].target)


def test_a_merge_on_the_hosted_repository_fast_forwards_the_agents_branch(repos):
    hosted, local = repos
    merged = commit(hosted, "v2")
    results = mirror.sync(local.path, "origin")
    assert head(local) == merged
    assert [(r.branch, r.action) for r in results] == [("refs/heads/main", "fast-forward")]
    assert [r.action for r in mirror.sync(local.path, "origin")] == ["up-to-date"]


def test_the_agents_revert_commit_and_notes_reach_the_hosted_repository(repos):
    hosted, local = repos
    revert = commit(local, "v1 again (revert)")
    local.create_note("deployed", SIG, SIG, revert, mirror.NOTES_REF)
    results = mirror.sync(local.path, "origin")
    assert [r.action for r in results] == ["pushed"]
    assert head(pygit2.Repository(hosted.path)) == revert
    assert pygit2.Repository(hosted.path).lookup_note(revert, mirror.NOTES_REF).message == "deployed"


def test_diverged_the_hosted_repository_wins_and_the_drop_is_logged(repos):
    hosted, local = repos
    theirs = commit(hosted, "v3 merged meanwhile")
    ours = commit(local, "agent revert")
    events = []
    results = mirror.sync(local.path, "origin", lambda event, **f: events.append((event, f)))
    assert [r.action for r in results] == ["reset-to-remote"]
    assert head(local) == theirs
    assert ("mirror-diverged", {"branch": "refs/heads/main", "dropped": ours, "remote": theirs}) in events


def test_the_webhook_pokes_and_other_paths_are_refused():
    poked = threading.Event()
    hook = Webhook(0, poked.set).start()
    try:
        url = f"http://127.0.0.1:{hook.port}"
        with urllib.request.urlopen(urllib.request.Request(url + "/hook", data=b"{}", method="POST"), timeout=5) as response:
            assert response.status == 202
        assert poked.wait(5)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url + "/other", data=b"", method="POST"), timeout=5)
        assert refused.value.code == 404
    finally:
        hook.stop()


def test_a_poked_tracker_syncs_and_the_ref_watcher_wakes_the_agent(repos):
    from reconciler.agent.triggers import RefWatcher, RemoteTracker

    hosted, local = repos
    woken = threading.Event()
    watcher = RefWatcher(local.path, lambda reason: woken.set()).start()
    tracker = RemoteTracker(local.path, "origin", interval=3600, log=lambda *a, **k: None).start()
    try:
        woken.wait(2)  # the tracker's first round at start may already wake it
        woken.clear()
        merged = commit(hosted, "v2 merged on the hosting service")
        tracker.poke()
        assert woken.wait(10), "the fetch moved the branch but the agent was not woken"
        deadline = time.monotonic() + 10  # the fetch's own ref write may wake it a moment first
        while head(local) != merged and time.monotonic() < deadline:
            time.sleep(0.05)
        assert head(local) == merged
    finally:
        tracker.stop()
        watcher.stop()


def test_without_a_ref_watcher_the_tracker_itself_wakes_the_agent_when_a_fetch_moved_a_branch(repos):
    """``run --remote --no-watch``: the webhook's fetch is the only news; a
    sync that moved nothing wakes nobody."""
    from reconciler.agent.triggers import RemoteTracker

    hosted, local = repos
    reasons: list[str] = []
    woken = threading.Event()
    tracker = RemoteTracker(local.path, "origin", interval=3600, log=lambda *a, **k: None,
                            on_trigger=lambda reason: (reasons.append(reason), woken.set())).start()
    try:
        woken.wait(5)  # the first round at start may bring the hosted branch
        woken.clear()
        reasons.clear()
        tracker.poke()  # nothing new: no trigger
        merged = commit(hosted, "v2 merged on the hosting service")
        tracker.poke()
        assert woken.wait(10), "the fetch moved the branch but the agent was not woken"
        assert head(local) == merged
        assert reasons == ["fetch:origin"]
    finally:
        tracker.stop()


@pytest.fixture
def refusing_host(tmp_path):
    """A hosted repository behind a real git server (git daemon on loopback,
    receive-pack on, so the server runs hooks as a forge does) whose
    pre-receive hook refuses every push; and the agent's clone of it."""
    import shutil
    import socket
    import subprocess

    from tests.pushing import wait_for

    daemon = shutil.which("git-daemon") or "/usr/lib/git-core/git-daemon"
    root = tmp_path / "served"
    hosted = pygit2.init_repository(str(root / "hosted.git"), bare=True, initial_head="main")
    commit(hosted, "v1")
    hook = root / "hosted.git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'signed commits only' >&2\nexit 1\n")
    hook.chmod(0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([daemon, "--reuseaddr", "--listen=127.0.0.1", f"--port={port}", f"--base-path={root}",
                               "--export-all", "--enable=receive-pack", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        assert wait_for(listening, timeout=30), "git daemon did not listen"
        local = pygit2.clone_repository(f"git://127.0.0.1:{port}/hosted.git", str(tmp_path / "agent.git"), bare=True)
        yield hosted, local
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_push_the_hosted_repository_refuses_is_said_so_not_called_pushed(refusing_host):
    hosted, local = refusing_host
    before = head(hosted)
    revert = commit(local, "v1 again (an unsigned revert)")
    local.create_note("rolled-back", SIG, SIG, revert, mirror.NOTES_REF)
    events = []
    results = mirror.sync(local.path, "origin", lambda event, **f: events.append((event, f)))
    assert [(r.action, r.refused) for r in results] == [("push-refused", "pre-receive hook declined")]
    assert head(pygit2.Repository(hosted.path)) == before  # the server really has none of it
    refused = sorted(f["ref"] for e, f in events if e == "mirror-push-refused")
    assert refused == ["refs/heads/main", mirror.NOTES_REF]
    assert not any(e == "mirror-sync" and f["action"] == "pushed" for e, f in events)


def test_an_unreachable_remote_is_a_failed_fetch_and_a_bug_is_said_as_one(repos, monkeypatch, tmp_path):
    """The tracker lives on through both; only the network is called a failed fetch."""
    from reconciler.agent.triggers import RemoteTracker

    hosted, local = repos
    local.remotes.set_url("origin", f"file://{tmp_path}/gone.git")
    said = []
    logged = threading.Event()

    def log(event, **fields):
        said.append((event, fields))
        logged.set()

    tracker = RemoteTracker(local.path, "origin", interval=3600, log=log).start()
    try:
        assert logged.wait(30)
        assert said[0][0] == "fetch-failed" and "gone.git" in said[0][1]["error"]
        logged.clear()
        monkeypatch.setattr(mirror, "sync", lambda *a, **k: None)  # a bug: iterating None
        tracker.poke()
        assert logged.wait(30)
        event, fields = said[1]
        assert event == "internal-error" and fields["error"].startswith("TypeError") and "Traceback" in fields["traceback"]
    finally:
        tracker.stop()
