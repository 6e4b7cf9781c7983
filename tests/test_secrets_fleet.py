"""Encrypted secrets on the real fleet, through the agent (issue 12).

A service gets one secret as a variable and one as a file, both written by
``reconciler secret set`` and pushed; the agent (its own process, the age
key named by $RECONCILER_AGE_KEY) deploys them.  Then: the values are in
the container (the file on a tmpfs, absent from ``docker inspect``);
rotating the file secret redeploys; and the two canary values are nowhere
they must not be: the agent's log, the notes, the state directory,
``plan --json``, the container labels, the file secret in the inspect's env,
and the argv of any process on the machine, sampled through the deploy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import docker
import pygit2
import pytest
from pyrage import x25519

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from tests.agentproc import AgentProcess
from tests.envrepo import make_env_repo
from tests.pushing import git as _git, wait_for


def git(cwd, *args):
    return _git(cwd, *args, author=("Ops", "ops@x"))


pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV_NAME = "zsecrets"
CANARY_ENV = "canary-env-4b1d7e0c93"
CANARY_FILE = "canary-file-9e2f60a1d7"
CANARY_ROTATED = "canary-rot-13c8f5b2a6"
CANARIES = (CANARY_ENV, CANARY_FILE, CANARY_ROTATED)


@contextlib.contextmanager
def engine(host):
    client = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41")
    try:
        yield client
    finally:
        client.close()


def ours(fleet) -> list:
    """The test environment's containers on h1 (an observer on the engine's local socket)."""
    found = []
    with engine(fleet.host("h1")) as client:
        # Other tests' containers come and go on h1: list, then inspect only ours.
        for summary in client.api.containers(all=True):
            if any(n.startswith(f"/{ENV_NAME}-") for n in summary["Names"]):
                try:
                    found.append(client.api.inspect_container(summary["Id"]))
                except docker.errors.NotFound:
                    pass  # removed since the list (the agent retires and prunes too)
    return found


def exec_in(fleet, container_id: str, *argv: str) -> str:
    with engine(fleet.host("h1")) as client:
        code, out = client.containers.get(container_id).exec_run(["/bin/busybox", *argv])  # the demo image links few applets
    assert code == 0, (argv, out)
    return out.decode()


def secret_set(repo: Path, name: str, value: str, *extra: str) -> None:
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(value.encode()))
    try:
        assert main(["secret", "set", "--repo", str(repo), ENV_NAME, name, *extra]) == 0
    finally:
        sys.stdin = saved


class ArgvWatch:
    """Every process's argv on this machine (hosts' sshd children included),
    read from /proc until stopped: a bounded number of sweeps."""

    def __init__(self, every=0.05, limit=20000):
        self.seen: set[bytes] = set()
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every, limit), daemon=True)

    def _run(self, every, limit):
        while not self._stop.is_set() and self.sweeps < limit:
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                            self.seen.add(fh.read())
                    except OSError:
                        pass  # gone already
            self.sweeps += 1
            self._stop.wait(every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def world(fleet, tmp_path):
    def clean():
        for attrs in ours(fleet):
            with engine(fleet.host("h1")) as client:
                client.containers.get(attrs["Id"]).remove(force=True)
            for mount in attrs.get("Mounts") or []:
                if mount.get("Destination") == "/run/secrets":
                    subprocess.run(["rm", "-rf", "--", mount["Source"]], check=False)

    clean()
    key = x25519.Identity.generate()
    keyfile = tmp_path / "agent.agekey"
    keyfile.write_text(f"# the agent's age identity\n{key}\n")
    keyfile.chmod(0o600)
    work = make_env_repo(tmp_path / "work", fleet, ENV_NAME)
    (work.path / "environments" / ENV_NAME / "age-recipients").write_text(f"{key.to_public()}\n")
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    git(work.path, "remote", "add", "origin", str(bare))
    yield work, bare, keyfile
    clean()


SERVICE = """
web:
  image: {image}
  hosts: [h1]
  health: {{type: running, interval: 300ms, successes: 1, deadline: 20s}}
  stop_timeout: 1s
"""


def test_encrypted_secrets_reach_the_container_rotate_and_leak_nowhere(fleet, world, tmp_path):
    work, bare, keyfile = world
    work.commit(SERVICE.format(image=fleet.images["v1"]), message="web")
    secret_set(work.path, "api-key", CANARY_ENV, "--service", "web", "--var", "API_KEY")
    secret_set(work.path, "tls-key", CANARY_FILE, "--service", "web", "--as", "file", "--var", "TLS_KEY_FILE")
    git(work.path, "add", "-A")
    git(work.path, "commit", "-q", "-m", "web: its secrets")
    git(work.path, "push", "-q", "origin", "main")
    first = git(work.path, "rev-parse", "HEAD").stdout.strip()

    state, log = tmp_path / "state", tmp_path / "agent.log"
    agent_env = {**os.environ, "RECONCILER_AGE_KEY": str(keyfile)}
    with ArgvWatch() as argv:
        agent = AgentProcess(bare, ENV_NAME, work.identity, log, state=state, environ=agent_env).start()
        try:
            running = lambda rev: [a for a in ours(fleet) if a["Name"] == f"/{ENV_NAME}-web" and a["State"]["Running"]
                                   and a["Config"]["Labels"].get("io.reconciler.revision") == rev]
            (container,) = wait_for(lambda: running(first)) or pytest.fail(log.read_text())

            # As a variable, and as a file on a tmpfs that `docker inspect` shows only as a path.
            seen = dict(line.split("=", 1) for line in exec_in(fleet, container["Id"], "env").splitlines() if "=" in line)
            assert seen["API_KEY"] == CANARY_ENV and seen["TLS_KEY_FILE"] == "/run/secrets/tls-key"
            assert exec_in(fleet, container["Id"], "cat", "/run/secrets/tls-key") == CANARY_FILE
            assert exec_in(fleet, container["Id"], "stat", "-f", "-c", "%T", "/run/secrets").strip() == "tmpfs"
            mounts = exec_in(fleet, container["Id"], "cat", "/proc/mounts")
            assert any(line.split()[1] == "/run/secrets" and " ro," in f" {line.split()[3]}," for line in mounts.splitlines()), mounts
            (mount,) = [m for m in container["Mounts"] if m["Destination"] == "/run/secrets"]
            assert mount["Type"] == "bind" and not mount["RW"]
            assert subprocess.run(["stat", "-f", "-c", "%T", mount["Source"]], capture_output=True, text=True).stdout.strip() == "tmpfs"
            user = fleet.host("h1").user
            assert os.stat(os.path.dirname(mount["Source"])).st_mode & 0o777 == 0o700
            assert Path(os.path.dirname(mount["Source"])).owner() == user
            hash_before = container["Config"]["Labels"]["io.reconciler.config-hash"]

            # Rotation: a new value for the file secret is a new commit, and redeploys.
            secret_set(work.path, "tls-key", CANARY_ROTATED)
            git(work.path, "commit", "-q", "-am", "web: rotate the TLS key")
            git(work.path, "push", "-q", "origin", "main")
            second = git(work.path, "rev-parse", "HEAD").stdout.strip()
            (rotated,) = wait_for(lambda: running(second)) or pytest.fail(log.read_text())
            assert rotated["Id"] != container["Id"]
            assert rotated["Config"]["Labels"]["io.reconciler.config-hash"] != hash_before
            assert exec_in(fleet, rotated["Id"], "cat", "/run/secrets/tls-key") == CANARY_ROTATED
            repo = pygit2.Repository(str(bare))
            assert wait_for(lambda: getattr(gitlog.latest(repo, second, ENV_NAME), "result", None) == "deployed")
            # The retired container keeps its own secrets directory: a rollback target still has its file.
            retired = [a for a in ours(fleet) if a["Name"].startswith(f"/{ENV_NAME}-web-old-")]
            assert retired and all(os.path.isdir(m["Source"]) for a in retired for m in a["Mounts"]
                                   if m["Destination"] == "/run/secrets")
        finally:
            agent.stop()

    plan = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--repo", str(bare), "--env", ENV_NAME,
                           "--identity", work.identity, "--json"], capture_output=True, text=True, env=agent_env)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    notes = "".join(
        repo[note.annotated_id].message + "\n" + repo[note.id].data.decode("utf-8", "replace")
        for ref in repo.references if ref.startswith("refs/notes/reconciler") for note in repo.notes(ref))
    assert first[:12] in notes or first in notes, "the notes were read"
    state_files = {str(p): p.read_bytes().decode("utf-8", "replace") for p in state.rglob("*") if p.is_file()}
    assert state_files, "the state directory was read"
    labels = {a["Name"]: json.dumps(a["Config"]["Labels"]) for a in ours(fleet)}
    file_env = {a["Name"]: json.dumps(a["Config"]["Env"]) for a in ours(fleet)}
    assert argv.sweeps > 10 and any(b"reconciler" in a for a in argv.seen), "the process table was read"

    places = {"agent log": log.read_text(), "notes": notes, "plan --json": plan.stdout + plan.stderr,
              **{f"state {k}": v for k, v in state_files.items()}, **{f"labels of {k}": v for k, v in labels.items()},
              **{f"env of {k}": v for k, v in file_env.items()},
              **{f"argv {a[:120]!r}": a.decode("utf-8", "replace") for a in argv.seen}}
    print(f"leak search: {len(places)} places, {argv.sweeps} sweeps of /proc, {len(argv.seen)} distinct argv")
    for canary in CANARIES:
        fingerprints = (canary, hashlib.sha256(canary.encode()).hexdigest()[:12])
        for where, text in places.items():
            if canary == CANARY_ENV and where.startswith("env of "):
                continue  # delivered as a variable: the inspect's env is where it is meant to be
            assert not any(f in text for f in fingerprints), f"{canary} found in {where}"
    assert any(CANARY_ENV in v for k, v in file_env.items()), "the env-delivered secret is where it was sent"
