"""Signed commits on the real fleet, at the door and in the agent (issue 12).

``policy.require_signed: true``; the trust roots are files outside the
repository (an OpenSSH allowed_signers file and an OpenPGP keyring read by
gpgv), named to the bare repository's hook by its git config and to the
agent by its options.  The agent runs as its own process with its own
signing key (trusted in allowed_signers too).

1. Through the pre-receive hook (real `git push`): unsigned, signed by an
   untrusted SSH key, signed by an untrusted OpenPGP key: each refused with
   the reason printed to the pusher, nothing reaches the repository or the
   hosts; signed by a trusted SSH key, then a trusted OpenPGP key: each
   accepted and deployed.
2. Straight into the bare repository (``git fetch`` into it runs no hook):
   the same three bad commits, each refused by the agent on its own,
   recorded as ``refused`` with the reason, the host's container untouched;
   then a good one deploys.
3. ``reconciler history`` shows who signed each deploy; every attempt the
   agent wrote is in a notes commit signed with its key
   (``history --verify-notes``), and a note forged with ``git notes`` is
   told apart.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import docker
import pygit2
import pytest

from reconciler.adapters import gitlog
from tests.agentproc import AgentProcess
from tests.envrepo import make_env_repo, remove_containers
from tests.pushing import wait_for
from tests.signing import git, make_keys, signed_commit

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "ztrustsig"
AGENT = "agent@example.com"


@pytest.fixture
def world(fleet, tmp_path):
    remove_containers(fleet, f"{ENV}-")
    keys = make_keys(tmp_path / "trust", ssh=("alice", "mallory", "agent"), pgp=("carol", "dave"),
                     trusted=("alice", "carol", "agent"))
    work = make_env_repo(tmp_path / "work", fleet, ENV).path
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    from reconciler.cli.main import main

    assert main(["install-hooks", str(bare)]) == 0
    git(bare, "config", "reconciler.allowedSigners", str(keys.allowed_signers))
    git(bare, "config", "reconciler.gpgKeyring", str(keys.keyring))
    git(work, "remote", "add", "origin", str(bare))
    yield fleet, keys, work, bare
    keys.close()
    remove_containers(fleet, f"{ENV}-")


def write_env(work: Path, fleet, image: str, tag: str) -> None:
    hosts = "\n".join(f"  {h.name}: {{address: {h.address}, port: {h.port}, user: {h.user}, docker_socket: {h.docker_socket}}}"
                      for h in fleet.hosts)
    (work / "environments" / ENV / "environment.yaml").write_text(
        f"hosts:\n{hosts}\npolicy:\n  require_signed: true\n  on_failure: note\n"
        f"services:\n  web:\n    image: {image}\n    hosts: [h1]\n"
        f"    env: {{RELEASE: {tag}}}\n"
        f"    health: {{type: running, interval: 300ms, successes: 1, deadline: 30s}}\n    stop_timeout: 1s\n")


def change(world, signer: str | None, tag: str, image: str = "v1") -> str:
    fleet, keys, work, _ = world
    write_env(work, fleet, fleet.images[image], tag)
    git(work, "add", "-A")
    return signed_commit(work, keys, signer, f"web {tag}")


def push(world):
    _, keys, work, _ = world
    return git(work, "push", "origin", "main", keys=keys, check=False)


def back_to_origin(world) -> None:
    """Drop the local commit the hook refused (it never left this clone)."""
    work = world[2]
    git(work, "checkout", "-q", "-B", "main", "origin/main")


def straight_in(world) -> None:
    """The local branch into the bare repository without any hook: fetch runs none."""
    _, _, work, bare = world
    git(bare, "fetch", "-q", str(work), "+refs/heads/main:refs/heads/main")


@contextlib.contextmanager
def h1(fleet):
    client = docker.DockerClient(base_url=f"unix://{fleet.host('h1').docker_socket}", version="1.41")
    try:
        yield client
    finally:
        client.close()


def active(fleet) -> tuple[str, str] | None:
    """(container id, revision label) of the running web container on h1, read on its engine."""
    with h1(fleet) as client:
        for c in client.containers.list(filters={"name": f"{ENV}-web"}):
            if c.name == f"{ENV}-web" and c.status == "running":
                return c.id, c.labels.get("io.reconciler.revision")
    return None


def result_of(bare: Path, commit: str):
    return gitlog.latest(pygit2.Repository(str(bare)), commit, ENV)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True)


def test_require_signed_is_enforced_by_the_hook_and_by_the_agent_and_history_shows_the_signers(world, tmp_path):
    fleet, keys, work, bare = world
    first = change(world, "alice", "ssh-1")
    pushed = push(world)
    assert pushed.returncode == 0, pushed.stderr

    log = tmp_path / "agent.log"
    agent = AgentProcess(bare, ENV, fleet.identity_file, log, state=tmp_path / "state",
                         args=("--allowed-signers", str(keys.allowed_signers), "--gpg-keyring", str(keys.keyring),
                               "--signing-key", str(keys.ssh["agent"]))).start()
    try:
        assert wait_for(lambda: (active(fleet) or ("", ""))[1] == first, 180), log.read_text()

        # 1. At the door: refused with the reason, nothing reaches the repository.
        for signer, reason in ((None, "is not signed"), ("mallory", "signed by an SSH key the agent does not trust"),
                               ("dave", "signed by an OpenPGP key the agent does not trust")):
            bad = change(world, signer, f"door-{signer}", "v2")
            refused = push(world)
            assert refused.returncode != 0, refused.stderr
            assert "must be signed by a key the agent trusts" in refused.stderr and reason in refused.stderr, refused.stderr
            assert bad[:12] in refused.stderr
            assert git(bare, "rev-parse", "main").stdout.strip() == first
            back_to_origin(world)
        running = active(fleet)
        assert running[1] == first

        ssh_ok = change(world, "alice", "door-alice", "v2")
        assert push(world).returncode == 0
        assert wait_for(lambda: (active(fleet) or ("", ""))[1] == ssh_ok, 180), log.read_text()
        pgp_ok = change(world, "carol", "door-carol", "v1")
        assert push(world).returncode == 0
        assert wait_for(lambda: (active(fleet) or ("", ""))[1] == pgp_ok, 180), log.read_text()

        # 2. Past the door (written straight into the bare repository): the agent refuses on its own.
        git(work, "fetch", "-q", "origin")
        before = active(fleet)
        refusals = {}
        for signer, reason in ((None, "is not signed"), ("mallory", "signed by an SSH key the agent does not trust"),
                               ("dave", "signed by an OpenPGP key the agent does not trust")):
            bad = change(world, signer, f"straight-{signer}", "v2")
            straight_in(world)
            attempt = wait_for(lambda: result_of(bare, bad), 120) or pytest.fail(log.read_text())
            assert attempt.result == "refused", attempt
            assert reason in attempt.message and bad[:12] in attempt.message, attempt.message
            refusals[bad] = attempt
            assert active(fleet) == before, "a refused commit changed the host"
        good = change(world, "alice", "straight-alice", "v2")
        straight_in(world)
        assert wait_for(lambda: (active(fleet) or ("", ""))[1] == good, 180), log.read_text()
        assert result_of(bare, good).result == "deployed"
    finally:
        agent.stop()

    # 3. Who signed each deploy, and who wrote each note.
    ssh_fpr, (carol_fpr,) = keys.ssh_fingerprint("alice"), [keys.pgp["carol"]]
    shown = cli("history", "--repo", str(bare), "--env", ENV)
    assert shown.returncode == 0, shown.stderr
    blocks = blocks_of(shown.stdout)
    for commit, signer in ((first, f"alice@example.com (ssh {ssh_fpr})"), (ssh_ok, f"alice@example.com (ssh {ssh_fpr})"),
                           (pgp_ok, f"Carol <carol@example.com> (openpgp {carol_fpr})"),
                           (good, f"alice@example.com (ssh {ssh_fpr})")):
        block = blocks[commit[:12]]
        assert f"{ENV}: deployed" in block and f"signed by {signer}" in block, shown.stdout
    for commit, attempt in refusals.items():
        block = blocks[commit[:12]]
        assert f"{ENV}: refused" in block and "\n        signed by" not in block, shown.stdout
        assert attempt.message.splitlines()[0] in block

    verify = ["history", "--repo", str(bare), "--env", ENV, "--verify-notes", "--agent-principal", AGENT,
              "--allowed-signers", str(keys.allowed_signers)]
    checked = cli(*verify)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    attempts = sum(line.startswith(f"    {ENV}: ") for line in checked.stdout.splitlines())
    assert attempts >= 7 and checked.stdout.count(f"note signed by {AGENT} (ssh {keys.ssh_fingerprint('agent')})") == attempts, \
        checked.stdout

    # A note written by hand (git notes, no agent key) claims the refused commit deployed.
    bad = next(iter(refusals))
    note = git(bare, "notes", "--ref", "reconciler", "show", bad).stdout
    forged = note.replace('"result": "refused"', '"result": "deployed"').replace(f"{ENV} refused", f"{ENV} deployed")
    assert forged != note
    (tmp_path / "forged").write_text(forged)
    git(bare, "notes", "--ref", "reconciler", "add", "-f", "-F", str(tmp_path / "forged"), bad)
    assert result_of(bare, bad).result == "deployed"
    caught = cli(*verify)
    assert caught.returncode == 1, caught.stdout
    assert "note NOT signed by the agent" in blocks_of(caught.stdout)[bad[:12]], caught.stdout
    assert "1 attempt(s) in the notes were not written by the agent" in caught.stdout


def blocks_of(text: str) -> dict[str, str]:
    return {block.split()[1]: block for block in ("\n" + text).split("\n20")[1:]}
