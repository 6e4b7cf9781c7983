"""Signed commits at the door: the pre-receive hook, driven by real `git push`es
into a bare repository, refuses what policy.require_signed does not allow and
tells the pusher why (issue 12).  Keys are throw-away, made per module."""

from __future__ import annotations

import pytest

from agentrepo import DIGEST2, env_yaml, files_for
from reconciler.cli.main import main
from signing import git, make_keys, signed_commit

ENV_FILE = "environments/staging/environment.yaml"


def signed_env(digest: str | None = None, *, required: bool = True, **kwargs) -> str:
    text = env_yaml(digest, **kwargs) if digest else env_yaml(**kwargs)
    return text.replace("policy:\n", f"policy:\n  require_signed: {'true' if required else 'false'}\n")


def write(work, files: dict[str, str]) -> None:
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = make_keys(tmp_path_factory.mktemp("keys"))
    yield made
    made.close()


@pytest.fixture
def repos(tmp_path, keys):
    """A bare repository with the hooks and the trust root in its git config,
    and a clone whose first commit (signed by alice) requires signatures."""
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    git(bare, "config", "reconciler.allowedSigners", str(keys.allowed_signers))
    git(bare, "config", "reconciler.gpgKeyring", str(keys.keyring))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    write(work, {**files_for(), ENV_FILE: signed_env()})
    git(work, "add", "-A")
    signed_commit(work, keys, "alice", "web v1, signed")
    pushed = git(work, "push", "origin", "main", check=False)
    assert pushed.returncode == 0, pushed.stderr
    return bare, work


def change(work, keys, signer: str | None, message: str, text: str | None = None) -> str:
    write(work, {ENV_FILE: text or signed_env(DIGEST2, tag=message.replace(" ", "-"))})
    git(work, "add", "-A")
    return signed_commit(work, keys, signer, message)


def push(work, *refspec: str, keys=None):
    return git(work, "push", "origin", *(refspec or ("main",)), keys=keys, check=False)


def tip(bare) -> str:
    return git(bare, "rev-parse", "main").stdout.strip()


def refused(result, *reasons: str) -> None:
    assert result.returncode != 0, result.stderr
    assert "must be signed by a key the agent trusts" in result.stderr, result.stderr
    for reason in reasons:
        assert reason in result.stderr, result.stderr


@pytest.mark.parametrize("signer", ["alice", "carol"], ids=["ssh", "openpgp"])
def test_a_commit_signed_by_a_trusted_key_is_accepted(repos, keys, signer):
    bare, work = repos
    new = change(work, keys, signer, "v2")
    result = push(work)
    assert result.returncode == 0, result.stderr
    assert tip(bare) == new


def test_an_unsigned_commit_is_refused_with_the_reason(repos, keys):
    bare, work = repos
    before = tip(bare)
    new = change(work, keys, None, "v2")
    result = push(work)
    refused(result, f"staging: commit {new[:12]} is not signed", "policy.require_signed")
    assert tip(bare) == before


@pytest.mark.parametrize(("signer", "reason"), [("mallory", "signed by an SSH key the agent does not trust"),
                                                 ("dave", "signed by an OpenPGP key the agent does not trust")], ids=["ssh", "openpgp"])
def test_a_commit_signed_by_an_untrusted_key_is_refused(repos, keys, signer, reason):
    bare, work = repos
    before = tip(bare)
    new = change(work, keys, signer, "v2")
    result = push(work)
    refused(result, f"commit {new[:12]}", reason)
    assert tip(bare) == before


@pytest.mark.parametrize("signer", ["alice", "carol"], ids=["ssh", "openpgp"])
def test_a_trusted_signature_moved_onto_another_commit_is_refused(repos, keys, signer):
    """A forged commit: the trusted key's signature of one commit, attached
    to another (a different tree), as a mallory with a copy of a signed
    commit would write it."""
    import pygit2

    bare, work = repos
    before = tip(bare)
    honest = change(work, keys, signer, "v2")
    repo = pygit2.Repository(str(work))
    signature, payload = repo[honest].gpg_signature
    forged_payload = payload.decode().replace("v2", "v3-evil", 1)
    blob = repo.create_blob(signed_env(DIGEST2, tag="evil").encode())
    tree = repo.TreeBuilder(repo[honest].tree)
    environments = repo[repo[honest].tree["environments"].id]
    staging = repo[environments["staging"].id]
    staging_tb = repo.TreeBuilder(staging)
    staging_tb.insert("environment.yaml", blob, pygit2.enums.FileMode.BLOB)
    env_tb = repo.TreeBuilder(environments)
    env_tb.insert("staging", staging_tb.write(), pygit2.enums.FileMode.TREE)
    tree.insert("environments", env_tb.write(), pygit2.enums.FileMode.TREE)
    new_tree = str(tree.write())
    forged_payload = "\n".join(("tree " + new_tree) if line.startswith("tree ") else line for line in forged_payload.split("\n"))
    forged = repo.create_commit_with_signature(forged_payload, signature.decode())
    git(work, "update-ref", "refs/heads/main", str(forged))
    result = push(work, "--force", "main")
    refused(result, f"commit {str(forged)[:12]}")
    assert ("does not verify" in result.stderr) or ("does not match" in result.stderr), result.stderr
    assert tip(bare) == before


def test_every_added_commit_must_verify_not_only_the_tip(repos, keys):
    bare, work = repos
    before = tip(bare)
    unsigned = change(work, keys, None, "v2")
    change(work, keys, "alice", "v3")
    result = push(work)
    refused(result, f"commit {unsigned[:12]} is not signed")
    assert tip(bare) == before


def test_an_unsigned_commit_pushed_to_a_side_branch_first_is_still_refused_on_main(repos, keys):
    bare, work = repos
    before = tip(bare)
    unsigned = change(work, keys, None, "v2")
    side = push(work, "main:refs/heads/feature")
    assert side.returncode == 0, side.stderr  # no environment follows feature
    result = push(work)
    refused(result, f"commit {unsigned[:12]} is not signed")
    assert tip(bare) == before


def test_turning_the_requirement_off_takes_a_signed_commit(repos, keys):
    bare, work = repos
    off = signed_env(DIGEST2, required=False, tag="v2")
    change(work, keys, None, "off unsigned", off)
    refused(push(work), "is not signed")
    git(work, "reset", "-q", "--hard", "HEAD~1")
    change(work, keys, "alice", "off signed", off)
    assert push(work).returncode == 0
    # Now off: an unsigned commit passes.
    write(work, {"README": "notes"})
    git(work, "add", "README")
    signed_commit(work, keys, None, "docs")
    assert push(work).returncode == 0


def test_moving_the_environment_to_a_new_branch_of_its_own_keeps_the_requirement(repos, keys):
    """staging follows main (HEAD); a new branch named staging would become
    what it follows, so creating one unsigned, with the policy off, is refused."""
    bare, work = repos
    git(work, "checkout", "-q", "-b", "staging")
    change(work, keys, None, "off on a branch of its own", signed_env(DIGEST2, required=False, tag="v2"))
    result = push(work, "staging")
    refused(result, "is not signed")
    assert git(bare, "rev-parse", "--verify", "-q", "refs/heads/staging", check=False).returncode != 0


def test_removing_the_environment_takes_a_signed_commit(repos, keys):
    bare, work = repos
    before = tip(bare)
    git(work, "rm", "-q", "-r", "environments/staging")
    write(work, {"environments/other/environment.yaml": signed_env(required=False), "environments/other/known_hosts": "#\n"})
    git(work, "add", "-A")
    removed = signed_commit(work, keys, None, "staging removed")
    refused(push(work), f"staging: commit {removed[:12]} is not signed")
    assert tip(bare) == before


def test_without_a_trust_root_a_required_signature_cannot_pass(repos, keys):
    bare, work = repos
    git(bare, "config", "--unset", "reconciler.allowedSigners")
    change(work, keys, "alice", "v2")
    refused(push(work), "no trusted SSH keys are configured", "RECONCILER_ALLOWED_SIGNERS")


def test_the_trust_root_can_come_from_the_environment_of_the_hook(repos, keys, tmp_path):
    bare, work = repos
    git(bare, "config", "--unset", "reconciler.allowedSigners")
    only_mallory = tmp_path / "mallory_signers"
    only_mallory.write_text(f'mallory@example.com {(keys.root / "mallory_ed25519.pub").read_text()}')
    change(work, keys, "alice", "v2")
    env = keys.env()
    env["RECONCILER_ALLOWED_SIGNERS"] = str(only_mallory)
    import subprocess

    result = subprocess.run(["git", "push", "origin", "main"], cwd=work, env=env, capture_output=True, text=True)
    refused(result, "does not trust")
    env["RECONCILER_ALLOWED_SIGNERS"] = str(keys.allowed_signers)
    result = subprocess.run(["git", "push", "origin", "main"], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_an_environment_without_the_requirement_takes_unsigned_commits(tmp_path, keys):
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    write(work, {**files_for(), ENV_FILE: signed_env(required=False)})
    git(work, "add", "-A")
    signed_commit(work, keys, None, "v1")
    result = push(work)
    assert result.returncode == 0, result.stderr
    assert "signed" not in result.stderr
