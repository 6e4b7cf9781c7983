"""The rollback lever under policy.require_signed (issue 12).  The lever ends
with a commit that makes the branch say what runs; the agent checks that
commit like any other, so it must be signed by a key the agent trusts, or
the agent refuses it.  The lever therefore signs it with the user's
``--signing-key``, and without one (or with a key the trust root does not
have) it refuses before any host changes, saying so.  Real git signing and
ssh-keygen; in-memory hosts."""

from __future__ import annotations

import dataclasses

import pytest

from agentrepo import DIGEST2
from reconciler.adapters import gitlog
from reconciler.adapters.signatures import Trust
from reconciler.engine.run import Request, reconcile, run
from signing import git, make_keys, signed_commit
from test_agent_reconcile import V1, V2, context, serving, world  # noqa: F401  (fixtures)
from test_engine_signatures import work, write  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = make_keys(tmp_path_factory.mktemp("keys"), ssh=("agent", "alice", "mallory"), pgp=(), trusted=("agent", "alice"))
    yield made
    made.close()


def agent_ctx(tmp_path, world, keys):
    return dataclasses.replace(context(tmp_path, world), trust=Trust(keys.allowed_signers), signing_key=str(keys.ssh["agent"]))


def lever(tmp_path, world, keys, signing_key: str | None):
    ctx = dataclasses.replace(context(tmp_path, world), trust=Trust(keys.allowed_signers), signing_key=signing_key)
    return run(ctx, Request("staging", "rollback", trigger="cli", actor="ann@box (cli)"))


@pytest.fixture
def two_releases(tmp_path, world, work, keys):
    write(work, required=True)
    v1 = signed_commit(work, keys, "alice", "web v1")
    assert reconcile(agent_ctx(tmp_path, world, keys), "staging").result == "deployed"
    env = work / "environments" / "staging" / "environment.yaml"
    env.write_text(env.read_text().replace("web:v1@sha256:" + "1" * 64, "web:v2@" + DIGEST2))
    git(work, "add", "-A")
    v2 = signed_commit(work, keys, "alice", "web v2")
    assert reconcile(agent_ctx(tmp_path, world, keys), "staging").result == "deployed"
    assert serving(world) == (str(V2), "running")
    return v1, v2


@pytest.mark.parametrize("signer, reason", [(None, "needs a signing key"), ("mallory", "does not trust")],
                         ids=["no-key", "untrusted-key"])
def test_the_lever_refuses_before_any_host_changes_when_it_cannot_sign_what_the_agent_trusts(tmp_path, world, work, keys,
                                                                                               two_releases, signer, reason):
    _, v2 = two_releases
    result = lever(tmp_path, world, keys, str(keys.ssh[signer]) if signer else None)
    assert (result.result, result.kind, result.reason) == ("refused", "stalled", "SigningKeyRequired"), result
    assert reason in result.message and "policy.require_signed" in result.message, result.message
    assert serving(world) == (str(V2), "running")
    repo = gitlog.open_repo(work)
    assert gitlog.branch_head(repo, "refs/heads/main") == v2
    # The agent, looking again, leaves everything as it is.
    assert reconcile(agent_ctx(tmp_path, world, keys), "staging").result == "in-sync"
    assert serving(world) == (str(V2), "running")


def test_the_lever_signs_its_commit_with_the_users_key_and_the_agent_keeps_the_rollback(tmp_path, world, work, keys, two_releases):
    v1, v2 = two_releases
    result = lever(tmp_path, world, keys, str(keys.ssh["alice"]))
    assert result.result == "rolled-back" and serving(world) == (str(V1), "running")
    repo = gitlog.open_repo(work)
    head = gitlog.branch_head(repo, "refs/heads/main")
    assert head == result.new_commit and repo[head].parents[0].id == repo[v2].id
    signature, _ = repo[head].gpg_signature
    assert signature is not None and b"BEGIN SSH SIGNATURE" in signature
    verified = git(work, "-c", f"gpg.ssh.allowedSignersFile={keys.allowed_signers}", "verify-commit", head, check=False)
    assert verified.returncode == 0 and 'Good "git" signature for alice@example.com' in verified.stderr, verified.stderr
    # The agent checks the lever's commit like any other: trusted, so the rollback stays.
    after = reconcile(agent_ctx(tmp_path, world, keys), "staging")
    assert after.result == "in-sync", after
    assert serving(world) == (str(V1), "running")
    assert gitlog.branch_head(repo, "refs/heads/main") == head
    assert [a.result for a in gitlog.attempts(repo, head, "staging")] == ["rolled-back"]


def test_without_require_signed_the_lever_needs_no_key(tmp_path, world, work, keys):
    write(work, required=False)
    signed_commit(work, keys, None, "web v1")
    assert reconcile(agent_ctx(tmp_path, world, keys), "staging").result == "deployed"
    env = work / "environments" / "staging" / "environment.yaml"
    env.write_text(env.read_text().replace("web:v1@sha256:" + "1" * 64, "web:v2@" + DIGEST2))
    git(work, "add", "-A")
    signed_commit(work, keys, None, "web v2")
    assert reconcile(agent_ctx(tmp_path, world, keys), "staging").result == "deployed"
    result = lever(tmp_path, world, keys, None)
    assert result.result == "rolled-back" and serving(world) == (str(V1), "running")
    assert reconcile(agent_ctx(tmp_path, world, keys), "staging").result == "in-sync"


def test_an_agent_without_a_signing_key_does_not_revert_into_a_commit_it_would_refuse(tmp_path, world, work, keys):
    """Reproduced first: the unsigned revert was refused by the agent's own
    gate (UnsignedCommit) at its next look.  Now no revert is made, and the
    record says why; the failed commit stays stalled, the hosts keep v1."""
    from agentrepo import DIGEST3

    write(work, required=True)
    signed_commit(work, keys, "alice", "web v1")
    ctx = dataclasses.replace(agent_ctx(tmp_path, world, keys), signing_key=None)
    assert reconcile(ctx, "staging").result == "deployed"
    env = work / "environments" / "staging" / "environment.yaml"
    env.write_text(env.read_text().replace("web:v1@sha256:" + "1" * 64, "web:v3@" + DIGEST3))
    git(work, "add", "-A")
    bad = signed_commit(work, keys, "alice", "web v3, never healthy")
    result = reconcile(ctx, "staging")
    assert result.result == "rolled-back" and result.revert_commit is None
    repo = gitlog.open_repo(work)
    assert gitlog.branch_head(repo, "refs/heads/main") == bad
    attempt = gitlog.latest(repo, bad, "staging")
    assert "not reverted: policy.require_signed, and the agent has no --signing-key" in attempt.message, attempt.message
    assert attempt.message.splitlines()[0].startswith("h1: health check failed")
    again = reconcile(ctx, "staging")
    assert (again.result, again.kind) == ("skipped", "stalled") and serving(world) == (str(V1), "running")
