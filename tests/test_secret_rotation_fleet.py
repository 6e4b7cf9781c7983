"""Host-file secrets rotate on the real fleet (issue 12).

A service takes two secrets from files on its host (``file:``), one as a
variable and one as a file under /run/secrets.  The agent (its own process)
deploys it from a real push.  Then each file is rewritten on the host, with
no commit: on its next drift look the agent sees the new keyed digest in
the config hash and redeploys, and the container has the new value; a look
with nothing rotated changes nothing; ``plan`` from a shell (the same
identity) agrees that the hosts are in sync.  The values are in no log
line, note, plan, label or state file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import docker
import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from tests.agentproc import AgentProcess, log_events
from tests.envrepo import make_env_repo, remove_containers
from tests.pushing import git, wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "ztrustrot"
VALUES = ("canary-db-1-7c0e93a1", "canary-db-2-51bd08f4", "canary-tls-1-e6a2c9d0", "canary-tls-2-0f4b7a3e")


@pytest.fixture
def world(fleet, tmp_path):
    remove_containers(fleet, f"{ENV}-")
    # The host's files: the sandbox hosts share this machine's filesystem.
    files = Path(tempfile.mkdtemp(prefix="rcl-trust-hostsecrets-"))
    files.chmod(0o700)
    deploy = pwd.getpwnam(fleet.hosts[0].user)  # the user the product reaches hosts as reads them (README)
    os.chown(files, deploy.pw_uid, deploy.pw_gid)
    work = make_env_repo(tmp_path / "work", fleet, ENV)
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    git(work.path, "remote", "add", "origin", str(bare))
    yield fleet, work, bare, files
    remove_containers(fleet, f"{ENV}-")
    subprocess.run(["rm", "-rf", "--", str(files)], check=False)


def rotate(path: Path, value: str) -> None:
    """As an operator's tool would: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(value + "\n")
    tmp.chmod(0o600)
    owner = path.parent.stat()  # the deploy user's, like the directory
    os.chown(tmp, owner.st_uid, owner.st_gid)
    os.replace(tmp, path)


@contextlib.contextmanager
def h3(fleet):
    client = docker.DockerClient(base_url=f"unix://{fleet.host('h3').docker_socket}", version="1.41")
    try:
        yield client
    finally:
        client.close()


def active(fleet):
    with h3(fleet) as client:
        for c in client.containers.list(filters={"name": f"{ENV}-web"}):
            if c.name == f"{ENV}-web" and c.status == "running":
                return c
    return None


def seen(fleet, container) -> tuple[str, str]:
    """(DB_PASSWORD in the container's environment, the content of /run/secrets/tls)."""
    with h3(fleet) as client:
        c = client.containers.get(container.id)
        code, env = c.exec_run(["/bin/busybox", "env"])
        assert code == 0, env
        code, tls = c.exec_run(["/bin/busybox", "cat", "/run/secrets/tls"])
        assert code == 0, tls
    variables = dict(line.split("=", 1) for line in env.decode().splitlines() if "=" in line)
    return variables.get("DB_PASSWORD", ""), tls.decode()


def ends(log: Path) -> int:
    return len(log_events(log, "reconcile-end"))


def test_rewriting_a_host_secret_file_redeploys_the_service_and_nothing_else_does(world, tmp_path):
    fleet, work, bare, files = world
    db, tls = files / "db-password", files / "tls.pem"
    rotate(db, VALUES[0])
    rotate(tls, VALUES[2])
    work.commit(f"""
    web:
      image: {fleet.images['v1']}
      hosts: [h3]
      secrets:
        - {{name: db-password, env: DB_PASSWORD, file: {db}}}
        - {{name: tls, file: {tls}, as: file}}
      health: {{type: running, interval: 300ms, successes: 1, deadline: 30s}}
      stop_timeout: 1s
    """, policy="drift_interval: 2s", message="web with host-file secrets")
    git(work.path, "push", "-q", "origin", "main")
    commit = git(work.path, "rev-parse", "HEAD").stdout.strip()

    log, state = tmp_path / "agent.log", tmp_path / "state"
    agent = AgentProcess(bare, ENV, fleet.identity_file, log, state=state).start()
    try:
        first = wait_for(lambda: active(fleet), 180) or pytest.fail(log.read_text())
        assert seen(fleet, first) == (VALUES[0], VALUES[2])
        hash_of = lambda c: c.labels["io.reconciler.config-hash"]

        # Looks with nothing rotated: the same container.
        looked = ends(log)
        assert wait_for(lambda: ends(log) >= looked + 2, 60), log.read_text()
        assert active(fleet).id == first.id

        # The variable's file rotated on the host, no commit: the next drift look redeploys.
        rotate(db, VALUES[1])
        second = wait_for(lambda: (lambda c: c if c is not None and c.id != first.id else None)(active(fleet)), 120) \
            or pytest.fail(log.read_text())
        assert seen(fleet, second) == (VALUES[1], VALUES[2])
        assert hash_of(second) != hash_of(first)

        # The file-delivered one rotated: redeployed again, the new content under /run/secrets.
        rotate(tls, VALUES[3])
        third = wait_for(lambda: (lambda c: c if c is not None and c.id not in (first.id, second.id) else None)(active(fleet)),
                         120) or pytest.fail(log.read_text())
        assert seen(fleet, third) == (VALUES[1], VALUES[3])

        looked = ends(log)
        assert wait_for(lambda: ends(log) >= looked + 2, 60), log.read_text()
        assert active(fleet).id == third.id, "a look with nothing rotated redeployed"
        repo = pygit2.Repository(str(bare))
        deployed = [a for a in gitlog.attempts(repo, commit, ENV) if a.result == "deployed"]
        assert len(deployed) == 3 and [a.trigger for a in deployed][1:] == ["drift", "drift"], deployed
    finally:
        agent.stop()

    # plan from a shell, with the agent's identity: in sync (the same digests).
    plan = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--repo", str(bare), "--env", ENV,
                           "--identity", fleet.identity_file, "--json"], capture_output=True, text=True)
    assert plan.returncode == 0 and json.loads(plan.stdout)["in_sync"], plan.stdout + plan.stderr

    notes = "".join(repo[n.id].data.decode("utf-8", "replace") for n in repo.notes(gitlog.NOTES_REF))
    assert ENV in notes
    with h3(fleet) as client:
        labels = json.dumps([c.labels for c in client.containers.list(all=True) if c.name.startswith(f"{ENV}-")])
    places = {"agent log": log.read_text(), "notes": notes, "plan": plan.stdout + plan.stderr, "labels": labels,
              **{f"state {p}": p.read_bytes().decode("utf-8", "replace") for p in state.rglob("*") if p.is_file()}}
    for value in VALUES:
        for where, text in places.items():
            assert value not in text and hashlib.sha256(value.encode()).hexdigest()[:12] not in text, f"{value} in {where}"
