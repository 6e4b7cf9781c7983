"""`reconciler demo` (what `make demo` runs after setup), run as a user runs
it: a subprocess whose output is captured.  Then git, the database, the
backups and the hosts say whether the story happened: release 1 and 2
deployed (a verified backup, the expand migration applied), release 3 rolled
back and reverted on the branch, history and status printed, the agent left
running, a push by hand deployed by it, and `demo --stop` stopping it.

The demo's environment is the example's `production` (port 8080 on every
host): the demo's own, so no other test uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.adapters.db import list_backups, verify
from reconciler.adapters.gitedit import set_scalar
from tests.dbfleet import columns, sql
from tests.envrepo import serving
from tests.pushing import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "production"


def reconciler(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler", *argv], capture_output=True, text=True, timeout=timeout)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def release_commits(repo: pygit2.Repository) -> dict[str, str]:
    """Subject prefix -> commit id, for the commits on main."""
    found = {}
    for commit in repo.walk(repo.references["refs/heads/main"].target):
        subject = commit.message.splitlines()[0]
        for n in (1, 2, 3):
            if subject.startswith(f"{ENV}: release {n}:"):
                found[f"release {n}"] = str(commit.id)
        if subject.startswith("demo: the example environment"):
            found["pinned"] = str(commit.id)
    return found


def tree_blobs(repo: pygit2.Repository, tree: pygit2.Tree):
    for entry in tree:
        if entry.type_str == "tree":
            yield from tree_blobs(repo, repo[entry.id])
        else:
            yield entry


def final(repo: pygit2.Repository, commit: str):
    attempts = [a for a in gitlog.attempts(repo, commit, ENV) if a.result != "error"]
    assert attempts, f"no attempt noted on {commit[:12]}"
    return attempts[-1]


@pytest.fixture
def demo_dir(fleet):
    root = Path(fleet.state_dir) / "demo"
    yield root
    reconciler("demo", "--stop", timeout=120)
    from reconciler.sandbox.demo_app import remove_environment_containers

    remove_environment_containers(fleet, ENV)


def test_make_demo_tells_the_story_and_git_says_it_happened(fleet, demo_dir):
    started = time.monotonic()
    done = reconciler("demo")
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    print(f"\n`reconciler demo` took {took:.1f}s (its own figure: {re.search(r'told in ([0-9.]+)s', out).group(1)}s)")

    bare = pygit2.Repository(str(demo_dir / "environments.git"))
    commits = release_commits(bare)
    r1, r2, r3 = commits["release 1"], commits["release 2"], commits["release 3"]

    # Release 1: deployed; its migration created the table.
    first = final(bare, r1)
    assert first.result == "deployed", first
    assert first.details["database"]["migrations"] == ["0001_create_notes.expand.sql"]

    # Release 2: deployed after a backup that verifies, and the expand migration applied.
    second = final(bare, r2)
    assert second.result == "deployed", second
    database = second.details["database"]
    assert database["migrations"] == ["0002_add_tag.expand.sql"]
    backup = Path(database["backup"])
    assert hashlib.sha256(backup.read_bytes()).hexdigest() == database["backup_sha256"].removeprefix("sha256:")
    ours = [b for b in list_backups(demo_dir / "backups") if b.commit == r2]
    assert [b.path for b in ours] == [backup]
    verify(ours[0])  # pg_restore reads it whole
    assert f"=> deployed {r2[:12]}" in out and f"backup: {backup}" in out
    assert "migrations applied: 0002_add_tag.expand.sql" in out

    # The DSN is in a file outside the repository that the environment names; never in git.
    dsn_file = demo_dir / f"{ENV}.dsn"
    dsn = dsn_file.read_text().strip()
    path = f"environments/{ENV}/environment.yaml"
    assert f"dsn_file: {dsn_file}\n" in bare[bare[r2].tree[path].id].data.decode()
    assert not any(dsn.encode() in bare[e.id].data for e in tree_blobs(bare, bare[r2].tree))
    assert columns(dsn, "notes")["tag"] == ("text", "YES")
    assert sorted(r[0] for r in sql(dsn, "SELECT name FROM reconciler_migrations")) == [
        "0001_create_notes.expand.sql", "0002_add_tag.expand.sql"]

    # Release 3: rolled back, and the agent's revert commit on the branch.
    third = final(bare, r3)
    assert third.result == "rolled-back", third
    assert third.reason == "HealthCheckFailed" and third.failed_check[1] == "web"
    assert third.revert_commit
    revert = bare[third.revert_commit]
    assert f"This reverts commit {r3}" in revert.message
    assert revert.parents[0].id == bare[r3].id
    assert bare[revert.tree[path].id].data == bare[bare[r2].tree[path].id].data  # release 2's desired state again
    head = gitlog.branch_head(bare, "refs/heads/main")
    assert head == third.revert_commit
    assert f"=> rolled-back {r3[:12]}" in out
    assert serving(fleet, 8080) == {h.name: "demo-web v2" for h in fleet.hosts}
    assert "tag" in columns(dsn, "notes")  # expand migrations are never undone

    # It ended with history and status.
    history = out[out.index(" history --repo "):]
    assert f"{r3[:12]} {ENV}: release 3" in history and "rolled-back" in history and f"reverted by {head[:12]}" in history
    status = out[out.index(" status --repo "):]
    assert f"last applied:   {head[:12]}" in status and f"{ENV} (desired @ {head[:12]})" in status

    # The agent is left running, and the output says how to push and how to stop.
    agent = json.loads((demo_dir / "agent.json").read_text())
    assert alive(agent["pid"])
    assert f"cd {demo_dir / 'work'}" in out and "git push" in out and f"kill {agent['pid']}" in out
    assert "demo --stop" in out

    # A push by hand, as the last lines say: release 1 again, deployed by the running agent.
    work = demo_dir / "work"
    env_file = work / path
    assert pygit2.Repository(str(work)).head.target == bare.references["refs/heads/main"].target
    again = re.search(r"image: (\S+/demo/app:1@sha256:[0-9a-f]{64})", out).group(1)
    env_file.write_text(set_scalar(env_file.read_text(), ("services", "web", "image"), again))
    git = {**os.environ, "GIT_AUTHOR_NAME": "a user", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "a user",
           "GIT_COMMITTER_EMAIL": "u@x"}
    subprocess.run(["git", "commit", "-qam", f"{ENV}: release 1 again"], cwd=work, env=git, check=True)
    pushed = subprocess.run(["git", "push"], cwd=work, env=git, capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    by_hand = str(pygit2.Repository(str(work)).head.target)
    noted = wait_for(lambda: next((a for a in gitlog.attempts(pygit2.Repository(str(demo_dir / "environments.git")),
                                                              by_hand, ENV) if a.result == "deployed"), None), 180)
    assert noted, (demo_dir / "agent.log").read_text()[-3000:]
    assert serving(fleet, 8080) == {h.name: "demo-web v1" for h in fleet.hosts}

    # And `demo --stop` stops it.
    stopped = reconciler("demo", "--stop", timeout=120)
    assert stopped.returncode == 0 and f"demo agent (pid {agent['pid']}) stopped" in stopped.stdout
    assert not alive(agent["pid"])
    assert reconciler("demo", "--stop", timeout=120).stdout.strip() == "no demo agent is running"
