"""policy.require_signed in the engine: whoever asks (the agent, the CLI), a
commit that is not signed by a trusted key is refused before any host
changes, and a signed one is recorded with its signer (issue 12).  Real git
signing, ssh-keygen and gpgv; in-memory hosts."""

from __future__ import annotations

import dataclasses

import pytest

from agentrepo import env_yaml
from reconciler.adapters import gitlog
from reconciler.adapters.signatures import Trust
from reconciler.engine.run import Request, reconcile, run
from signing import git, make_keys, signed_commit
from test_agent_reconcile import V1, context, serving, world  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = make_keys(tmp_path_factory.mktemp("keys"))
    yield made
    made.close()


def write(work, required: bool) -> None:
    env = work / "environments" / "staging"
    env.mkdir(parents=True, exist_ok=True)
    text = env_yaml()
    if required:
        text = text.replace("policy:\n", "policy:\n  require_signed: true\n")
    (env / "environment.yaml").write_text(text)
    (env / "known_hosts").write_text("# pinned keys\n")
    git(work, "add", "-A")


def signed_context(tmp_path, world, keys):
    return dataclasses.replace(context(tmp_path, world), trust=Trust(keys.allowed_signers, keys.keyring))


@pytest.fixture
def work(tmp_path):
    path = tmp_path / "env.git"  # where the test context looks: a repository with a work tree
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    return path


def test_an_unsigned_or_untrusted_commit_is_refused_and_a_signed_one_deploys_with_its_signer(tmp_path, world, work, keys):
    write(work, required=True)
    unsigned = signed_commit(work, keys, None, "web v1, unsigned")
    result = reconcile(signed_context(tmp_path, world, keys), "staging")
    assert (result.result, result.kind, result.reason) == ("refused", "stalled", "UnsignedCommit")
    assert serving(world) is None
    repo = gitlog.open_repo(work)
    assert gitlog.latest(repo, unsigned, "staging").reason == "UnsignedCommit"
    assert gitlog.branch_head(repo, "refs/heads/main") == unsigned  # not the commit's fault to revert: a human signs

    (work / "README").write_text("by mallory\n")
    git(work, "add", "-A")
    untrusted = signed_commit(work, keys, "mallory", "signed by a key nobody trusts")
    result = reconcile(signed_context(tmp_path, world, keys), "staging")
    assert (result.result, result.reason) == ("refused", "BadSignature") and serving(world) is None
    assert gitlog.latest(repo, untrusted, "staging").reason == "BadSignature"  # the refusal is noted on that commit

    (work / "README").write_text("by alice\n")
    git(work, "add", "-A")
    good = signed_commit(work, keys, "alice", "signed by alice")
    assert reconcile(signed_context(tmp_path, world, keys), "staging").result == "deployed"
    assert serving(world) == (str(V1), "running")
    attempt = gitlog.latest(repo, good, "staging")
    assert attempt.signer.startswith("alice@example.com (ssh SHA256:")


def test_the_cli_is_held_to_the_same_policy(tmp_path, world, work, keys):
    write(work, required=True)
    unsigned = signed_commit(work, keys, None, "unsigned")
    result = run(signed_context(tmp_path, world, keys), Request("staging", commit=unsigned, trigger="cli", actor="ann (cli)", force=True))
    assert (result.result, result.reason) == ("refused", "UnsignedCommit") and serving(world) is None


def test_the_agents_revert_of_a_failed_signed_release_is_signed_with_its_key_and_trusted(tmp_path, world, work, keys):
    from agentrepo import DIGEST3

    write(work, required=True)
    signed_commit(work, keys, "alice", "web v1")
    ctx = dataclasses.replace(signed_context(tmp_path, world, keys), signing_key=str(keys.ssh["alice"]))
    assert reconcile(ctx, "staging").result == "deployed"
    env = work / "environments" / "staging" / "environment.yaml"
    env.write_text(env.read_text().replace("web:v1@sha256:" + "1" * 64, "web:v3@" + DIGEST3))
    git(work, "add", "-A")
    bad = signed_commit(work, keys, "alice", "web v3, never healthy")
    result = reconcile(ctx, "staging")
    assert result.result == "rolled-back" and result.revert_commit
    repo = gitlog.open_repo(work)
    signature, _ = repo[result.revert_commit].gpg_signature
    assert signature is not None and b"BEGIN SSH SIGNATURE" in signature
    assert f"This reverts commit {bad}" in repo[result.revert_commit].message
    # The revert is what runs, and it passes the same signature policy.
    after = reconcile(ctx, "staging")
    assert after.result == "in-sync", after
    assert gitlog.latest(repo, result.revert_commit, "staging").signer.startswith("alice@example.com")
