"""The agent's own record under policy.require_signed, on the real fleet (issue 12).

``policy: {require_signed: true, on_failure: revert}``; the trust root is an
allowed_signers file outside the repository, named (with the agent's
principal, ``reconciler.agentPrincipal``) in the bare repository's git
config, where the pre-receive hook reads it.  The agent runs as its own
process with ``--signing-key``, its key trusted in allowed_signers.  Real
`git push`es through the hook (installed from this tree, so the hook runs
this tree's checks).

1. A signed push of a never-healthy release is rolled back; the agent's
   revert commit is signed with the agent's key (git verify-commit agrees),
   the agent checks its own revert like any commit and does not refuse it,
   and ``history`` shows the revert's signer.
2. The record cannot be forged through a push: a notes commit the agent did
   not sign, a deletion and a rewrite of refs/notes/reconciler are each
   refused with the ref and the reason; the agent's own notes, written
   straight into the repository while the hook is installed, all verify as
   the agent's (``history --verify-notes``, principal from the git config).
3. The rollback lever from a shell: without a signing key it refuses before
   any host changes and says a key is needed; with the user's trusted key
   its commit is signed, the host runs the older release, and the agent,
   reconciling the lever's commit, keeps it.
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
from reconciler.cli.commands.install_hooks import package_dir
from reconciler.core.record import Attempt
from tests.agentproc import AgentProcess, log_events
from tests.envrepo import make_env_repo, remove_containers
from tests.pushing import wait_for
from tests.signing import git, make_keys, signed_commit

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "trust2rev"
PORT = 18473
AGENT = "agent@example.com"
NOTES = gitlog.NOTES_REF


@pytest.fixture
def world(fleet, tmp_path):
    remove_containers(fleet, f"{ENV}-")
    keys = make_keys(tmp_path / "trust", ssh=("alice", "mallory", "agent"), pgp=(), trusted=("alice", "agent"))
    work = make_env_repo(tmp_path / "work", fleet, ENV).path
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    from reconciler.cli.main import main

    assert main(["install-hooks", str(bare)]) == 0
    git(bare, "config", "reconciler.allowedSigners", str(keys.allowed_signers))
    git(bare, "config", "reconciler.agentPrincipal", AGENT)
    git(work, "remote", "add", "origin", str(bare))
    yield fleet, keys, work, bare
    keys.close()
    remove_containers(fleet, f"{ENV}-")


def change(world, image: str, tag: str) -> str:
    fleet, keys, work, _ = world
    h1 = fleet.host("h1")
    (work / "environments" / ENV / "environment.yaml").write_text(
        f"hosts:\n  h1: {{address: {h1.address}, port: {h1.port}, user: {h1.user}, docker_socket: {h1.docker_socket}}}\n"
        "policy:\n  require_signed: true\n  on_failure: revert\n"
        f"services:\n  web:\n    image: {fleet.images[image]}\n    hosts: [h1]\n    ports: [\"{PORT}:8080\"]\n"
        f"    env: {{RELEASE: {tag}}}\n"
        "    health: {type: http, path: /health, interval: 500ms, successes: 2, deadline: 8s}\n    stop_timeout: 2s\n")
    git(work, "add", "-A")
    return signed_commit(work, keys, "alice", f"web {tag}")


def push(world, *refspec: str):
    _, keys, work, _ = world
    return git(work, "push", "origin", *(refspec or ("main",)), keys=keys, check=False)


def active_revision(fleet) -> str | None:
    client = docker.DockerClient(base_url=f"unix://{fleet.host('h1').docker_socket}", version="1.41")
    try:
        for c in client.containers.list(filters={"name": f"{ENV}-web"}):
            if c.name == f"{ENV}-web" and c.status == "running":
                return c.labels.get("io.reconciler.revision")
    finally:
        client.close()
    return None


def results(bare: Path, commit: str) -> list[Attempt]:
    return list(gitlog.attempts(pygit2.Repository(str(bare)), commit, ENV))


def head(bare: Path) -> str:
    return gitlog.branch_head(pygit2.Repository(str(bare)), "refs/heads/main")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True)


def ends(log: Path, commit: str) -> list[dict]:
    """The agent's reconcile-end lines for ``commit`` (logged by its short id)."""
    return log_events(log, "reconcile-end", commit=commit[:12])


def verify_commit(bare: Path, keys, commit: str) -> str:
    checked = git(bare, "-c", f"gpg.ssh.allowedSignersFile={keys.allowed_signers}", "verify-commit", commit, check=False)
    assert checked.returncode == 0, checked.stderr
    return checked.stderr


@contextlib.contextmanager
def agent(world, tmp_path):
    fleet, keys, _, bare = world
    log = tmp_path / "agent.log"
    with AgentProcess(bare, ENV, fleet.identity_file, log, state=tmp_path / "state",
                      args=("--signing-key", str(keys.ssh["agent"]))):
        yield log


def test_the_agents_signed_revert_its_unforgeable_notes_and_the_signed_lever(world, tmp_path):
    fleet, keys, work, bare = world
    assert f"PACKAGE={package_dir()}\n" in (bare / "hooks" / "pre-receive").read_text()  # this tree's checks
    v1 = change(world, "v1", "v1")
    assert push(world).returncode == 0
    with agent(world, tmp_path) as log:
        assert wait_for(lambda: active_revision(fleet) == v1, 180), log.read_text()
        v2 = change(world, "v2", "v2")
        assert push(world).returncode == 0
        assert wait_for(lambda: active_revision(fleet) == v2, 180), log.read_text()

        # 1. A signed, never-healthy release: rolled back, and the agent's signed revert is trusted by the agent.
        bad = change(world, "v3-unhealthy", "v3")
        assert push(world).returncode == 0
        assert wait_for(lambda: any(a.result == "rolled-back" for a in results(bare, bad)), 240), log.read_text()
        revert = wait_for(lambda: head(bare) != bad and head(bare), 60)
        assert revert and f"This reverts commit {bad}" in pygit2.Repository(str(bare))[revert].message
        assert f'Good "git" signature for {AGENT}' in verify_commit(bare, keys, revert)
        assert wait_for(lambda: results(bare, revert), 120), log.read_text()
        (in_sync,) = results(bare, revert)
        assert in_sync.result == "in-sync" and in_sync.signer.startswith(f"{AGENT} (ssh {keys.ssh_fingerprint('agent')})"), in_sync
        assert active_revision(fleet) == v2
        shown = cli("history", "--repo", str(bare), "--env", ENV)
        assert shown.returncode == 0, shown.stderr
        block = shown.stdout[shown.stdout.index(revert[:12]):].split("\n20")[0]
        assert f"{ENV}: in-sync" in block and f"signed by {AGENT} (ssh {keys.ssh_fingerprint('agent')})" in block, shown.stdout

        # 2. The record cannot be forged through a push.
        git(work, "fetch", "-q", "origin", f"+{NOTES}:{NOTES}", "+refs/heads/main:refs/remotes/origin/main")
        notes_before = git(bare, "rev-parse", NOTES).stdout.strip()
        gitlog.append_attempt(pygit2.Repository(str(work)), Attempt(ENV, bad, "deployed", finished=1.0, reason="forged"))
        forged = git(work, "rev-parse", NOTES).stdout.strip()
        refused = push(world, f"{NOTES}:{NOTES}")
        assert refused.returncode != 0, refused.stderr
        assert f"refusing the update of {NOTES}: it is the agent's deployment record" in refused.stderr, refused.stderr
        assert f"notes commit {forged[:12]} is not the agent's ({AGENT}): it is not signed" in refused.stderr, refused.stderr
        deleted = push(world, f":{NOTES}")
        assert deleted.returncode != 0 and f"{NOTES} may not be deleted" in deleted.stderr, deleted.stderr
        git(work, "update-ref", NOTES, git(work, "rev-parse", f"{notes_before}~1").stdout.strip())
        rewound = push(world, f"+{NOTES}:{NOTES}")
        assert rewound.returncode != 0 and "non-fast-forward update" in rewound.stderr, rewound.stderr
        assert git(bare, "rev-parse", NOTES).stdout.strip() == notes_before
        assert [a.result for a in results(bare, bad)] == ["rolled-back"]

        # 3. The lever from a shell.
        lever = ["rollback", "--repo", str(bare), "--env", ENV, "--identity", fleet.identity_file, "--yes"]
        unsigned = cli(*lever)
        assert unsigned.returncode != 0, unsigned.stdout + unsigned.stderr
        assert "needs a signing key" in unsigned.stdout + unsigned.stderr and "--signing-key" in unsigned.stdout + unsigned.stderr
        assert head(bare) == revert and active_revision(fleet) == v2
        signed = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(cli(*lever, "--signing-key", str(keys.ssh["alice"]))),
                          90, every=3)
        assert signed, "the lever never ran (the agent held the lock throughout)"
        rolled = head(bare)
        assert rolled != revert and pygit2.Repository(str(bare))[rolled].message.startswith(f"Roll back {ENV} to {v1[:12]}")
        assert 'Good "git" signature for alice@example.com' in verify_commit(bare, keys, rolled)
        assert active_revision(fleet) == v1
        # The agent reconciles the lever's commit, trusts it and keeps the rollback.
        # (It may first find the lever's lock still held: "locked", retried.)
        decided = lambda: [e for e in ends(log, rolled) if e["result"] != "locked"]  # noqa: E731
        assert wait_for(decided, 180), log.read_text()
        assert {e["result"] for e in decided()} == {"in-sync"}, ends(log, rolled)
        assert head(bare) == rolled and active_revision(fleet) == v1
        assert [a.result for a in results(bare, rolled)] == ["rolled-back"]

    # Every attempt the agent wrote (v1, v2, v3 rolled back, its revert in
    # sync) verifies as the agent's, with the principal from the git config;
    # the lever's two (refused without a key, unsigned; rolled back, signed
    # by alice) are told apart as not the agent's.
    checked = cli("history", "--repo", str(bare), "--env", ENV, "--verify-notes")
    out = checked.stdout
    assert out.count(f"note signed by {AGENT} (ssh {keys.ssh_fingerprint('agent')})") == 4, out
    assert out.count("note NOT signed by the agent") == 2, out
    assert f"signed by alice@example.com (ssh {keys.ssh_fingerprint('alice')}), not by the agent's key ({AGENT})" in out, out
    assert checked.returncode == 1
