"""The hooks, driven by the real git client pushing to a bare repository."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agentrepo import DIGEST2, env_yaml, files_for
from reconciler.cli.main import main


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Pusher", "GIT_AUTHOR_EMAIL": "p@x", "GIT_COMMITTER_NAME": "Pusher", "GIT_COMMITTER_EMAIL": "p@x"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check)


def write(work: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)


@pytest.fixture
def repos(tmp_path):
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    write(work, files_for())
    git(work, "add", "-A")
    git(work, "commit", "-qm", "web v1")
    pushed = git(work, "push", "-q", "origin", "main", check=False)
    assert pushed.returncode == 0, pushed.stderr
    return bare, work


def test_a_valid_push_is_accepted_and_the_agent_is_nudged(repos, tmp_path):
    bare, work = repos
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(bare / "reconciler.sock"))
    sock.settimeout(5)
    write(work, files_for(DIGEST2, tag="v2"))
    git(work, "commit", "-qam", "web v2")
    start = time.monotonic()
    result = git(work, "push", "origin", "main", check=False)
    assert result.returncode == 0, result.stderr
    assert "agent notified" in result.stderr
    assert sock.recv(4096) == b"refs/heads/main"
    assert time.monotonic() - start < 10
    sock.close()


def test_a_push_without_an_agent_still_succeeds(repos):
    bare, work = repos
    write(work, {"README": "docs"})
    git(work, "add", "README")
    git(work, "commit", "-qm", "docs")
    result = git(work, "push", "origin", "main", check=False)
    assert result.returncode == 0 and "no agent listening" in result.stderr


def test_invalid_yaml_is_rejected_with_locations(repos):
    bare, work = repos
    before = git(bare, "rev-parse", "main").stdout
    write(work, {"environments/staging/environment.yaml": env_yaml().replace("hosts: [web]", "hosts: [web")})
    git(work, "commit", "-qam", "broken")
    result = git(work, "push", "origin", "main", check=False)
    assert result.returncode != 0
    assert "does not validate" in result.stderr
    assert "environments/staging/environment.yaml:" in result.stderr  # path:line:col
    line = next(l for l in result.stderr.splitlines() if "environment.yaml:" in l)
    path, lineno, col = line.split("remote:")[-1].strip().split(":")[:3]
    assert lineno.isdigit() and col.isdigit()
    assert git(bare, "rev-parse", "main").stdout == before


def test_a_force_push_is_rejected(repos):
    bare, work = repos
    write(work, files_for(DIGEST2, tag="v2"))
    git(work, "commit", "-qam", "v2")
    git(work, "push", "-q", "origin", "main")
    git(work, "reset", "-q", "--hard", "HEAD~1")
    write(work, {"README": "rewritten"})
    git(work, "add", "README")
    git(work, "commit", "-qm", "rewrite")
    result = git(work, "push", "--force", "origin", "main", check=False)
    assert result.returncode != 0 and "non-fast-forward" in result.stderr


def test_deleting_an_environment_branch_is_rejected_but_tags_pass(repos):
    bare, work = repos
    git(work, "tag", "t1")
    assert git(work, "push", "-q", "origin", "t1", check=False).returncode == 0
    git(work, "push", "-q", "origin", "main:other")
    result = git(work, "push", "origin", ":other", check=False)
    assert result.returncode != 0 and "refusing to delete" in result.stderr
