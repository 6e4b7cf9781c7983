"""verify_commit, the agent's check of who signed what it deploys, and the
policy field that asks for it (issue 12).  Real ssh-keygen, gpgv and git."""

from __future__ import annotations

import subprocess

import pygit2
import pytest

from reconciler.adapters.signatures import Signer, Trust, signature_required, verify_commit
from reconciler.core.model import Policy
from reconciler.core.schema import load_environment, policy_of, validate
from reconciler.errors import BadSignature, StalledError, UnsignedCommit
from schema_helpers import ENV, snapshot
from signing import git, make_keys, signed_commit

REQUIRED = Policy(require_signed=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = make_keys(tmp_path_factory.mktemp("keys"))
    yield made
    made.close()


@pytest.fixture
def work(tmp_path):
    path = tmp_path / "work"
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    return path


def commit_by(work, keys, signer):
    (work / "f").write_text(f"{signer}\n")
    git(work, "add", "f")
    return signed_commit(work, keys, signer, f"by {signer}")


def trust(keys) -> Trust:
    return Trust(keys.allowed_signers, keys.keyring)


def test_the_signer_of_an_ssh_signed_commit(work, keys):
    commit = commit_by(work, keys, "alice")
    signer = verify_commit(pygit2.Repository(str(work)), commit, REQUIRED, trust(keys))
    assert signer == Signer("ssh", keys.ssh_fingerprint("alice"), "alice@example.com")
    assert str(signer) == f"alice@example.com (ssh {keys.ssh_fingerprint('alice')})"


def test_the_signer_of_an_openpgp_signed_commit(work, keys):
    commit = commit_by(work, keys, "carol")
    signer = verify_commit(pygit2.Repository(str(work)), commit, REQUIRED, trust(keys))
    assert signer == Signer("openpgp", keys.pgp["carol"], "Carol <carol@example.com>")


def test_an_armored_keyring_is_read_too(work, keys, tmp_path):
    armored = tmp_path / "trusted.asc"
    armored.write_bytes(subprocess.run(["gpg", "--batch", "--homedir", str(keys.gnupghome), "--export", "--armor", keys.pgp["carol"]],
                                       check=True, capture_output=True).stdout)
    assert armored.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    commit = commit_by(work, keys, "carol")
    assert verify_commit(pygit2.Repository(str(work)), commit, REQUIRED, Trust(None, armored)).principal == "Carol <carol@example.com>"


@pytest.mark.parametrize(("signer", "error", "reason"), [
    (None, UnsignedCommit, "is not signed"),
    ("mallory", BadSignature, "SSH key the agent does not trust"),
    ("dave", BadSignature, "OpenPGP key the agent does not trust"),
])
def test_a_required_signature_that_is_missing_or_untrusted_is_refused(work, keys, signer, error, reason):
    commit = commit_by(work, keys, signer)
    with pytest.raises(error, match=reason) as caught:
        verify_commit(pygit2.Repository(str(work)), commit, REQUIRED, trust(keys), environment="production")
    assert str(caught.value).startswith(f"production: commit {commit[:12]}")
    assert isinstance(caught.value, StalledError) and caught.value.kind == "stalled"
    assert not caught.value.blames_commit  # the fix is a signed commit, not the agent's revert


@pytest.mark.parametrize("signer", [None, "mallory", "dave"])
def test_when_not_required_a_missing_or_untrusted_signature_is_no_signer(work, keys, signer):
    commit = commit_by(work, keys, signer)
    assert verify_commit(pygit2.Repository(str(work)), commit, Policy(), trust(keys)) is None


def test_when_not_required_a_good_signature_still_names_its_signer(work, keys):
    commit = commit_by(work, keys, "alice")
    assert verify_commit(pygit2.Repository(str(work)), commit, Policy(), trust(keys)).principal == "alice@example.com"


def test_turning_the_requirement_off_needs_a_signature_itself(work, keys):
    commit = commit_by(work, keys, None)
    assert signature_required(Policy(), REQUIRED) and not signature_required(Policy(), Policy())
    with pytest.raises(UnsignedCommit):
        verify_commit(pygit2.Repository(str(work)), commit, Policy(require_signed=False), trust(keys), previous=REQUIRED)


def test_the_previous_policy_is_read_from_the_commit_last_applied(work, keys):
    from agentrepo import files_for
    from reconciler.adapters.signed_push import policy_at

    for path, text in files_for().items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text.replace("policy:\n", "policy:\n  require_signed: true\n"))
    git(work, "add", "-A")
    applied = signed_commit(work, keys, "alice", "signed, requiring signatures")
    assert policy_at(work, applied, "staging").require_signed is True
    assert policy_at(work, None, "staging") == Policy()


def test_no_trust_root_means_no_required_signature_verifies(work, keys):
    for signer, variable in (("alice", "RECONCILER_ALLOWED_SIGNERS"), ("carol", "RECONCILER_GPG_KEYRING")):
        commit = commit_by(work, keys, signer)
        with pytest.raises(BadSignature, match=variable):
            verify_commit(pygit2.Repository(str(work)), commit, REQUIRED, Trust())


@pytest.mark.parametrize("options", ['namespaces="git"', 'namespaces="file"', 'valid-before="20000101"', 'valid-after="20990101"'])
def test_ssh_verdicts_are_the_same_as_git_verify_commit(work, keys, tmp_path, options):
    """allowed_signers options (namespaces, validity at the commit's time)
    decide as they do for `git verify-commit`."""
    signers = tmp_path / "signers"
    signers.write_text(f'alice@example.com {options} {(keys.root / "alice_ed25519.pub").read_text()}')
    commit = commit_by(work, keys, "alice")
    by_git = git(work, "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", commit, check=False).returncode == 0
    try:
        verify_commit(pygit2.Repository(str(work)), commit, REQUIRED, Trust(signers, None))
        ours = True
    except BadSignature:
        ours = False
    assert ours == by_git
    assert ours == (options == 'namespaces="git"')


def test_a_revoked_ssh_key_is_refused_as_git_refuses_it(work, keys, tmp_path):
    revoked = tmp_path / "revoked"
    revoked.write_text((keys.root / "alice_ed25519.pub").read_text())
    commit = commit_by(work, keys, "alice")
    by_git = git(work, "-c", f"gpg.ssh.allowedSignersFile={keys.allowed_signers}", "-c", f"gpg.ssh.revocationFile={revoked}",
                 "verify-commit", commit, check=False)
    assert by_git.returncode != 0
    with pytest.raises(BadSignature, match="does not verify for alice@example.com"):
        verify_commit(pygit2.Repository(str(work)), commit, REQUIRED, Trust(keys.allowed_signers, None, revoked))
    assert verify_commit(pygit2.Repository(str(work)), commit, REQUIRED, Trust(keys.allowed_signers, None)).principal == "alice@example.com"


def test_the_trust_root_comes_from_the_option_then_the_environment_then_git_config(work):
    repo = pygit2.Repository(str(work))
    assert Trust.from_environment(repo, environ={}) == Trust()
    repo.config["gpg.ssh.allowedSignersFile"] = "/etc/git/allowed_signers"
    assert Trust.from_environment(repo, environ={}).allowed_signers.as_posix() == "/etc/git/allowed_signers"
    repo.config["reconciler.allowedSigners"] = "/etc/reconciler/allowed_signers"
    repo.config["reconciler.gpgKeyring"] = "/etc/reconciler/trusted.gpg"
    found = Trust.from_environment(repo, environ={})
    assert (found.allowed_signers.as_posix(), found.gpg_keyring.as_posix()) == ("/etc/reconciler/allowed_signers", "/etc/reconciler/trusted.gpg")
    environ = {"RECONCILER_ALLOWED_SIGNERS": "/agent/signers", "RECONCILER_GPG_KEYRING": "/agent/keyring"}
    assert Trust.from_environment(repo, environ=environ).allowed_signers.as_posix() == "/agent/signers"
    chosen = Trust.from_environment(repo, environ=environ, allowed_signers="/opt/signers")
    assert (chosen.allowed_signers.as_posix(), chosen.gpg_keyring.as_posix()) == ("/opt/signers", "/agent/keyring")


# ------------------------------------------------------------ the policy field


def test_require_signed_is_read_from_the_policy():
    text = ENV.replace("  require_digest: true\n", "  require_digest: true\n  require_signed: true\n")
    assert load_environment(snapshot(env=text), "test").policy.require_signed is True
    assert load_environment(snapshot(env=ENV), "test").policy.require_signed is False
    defaults = snapshot(env=ENV, files={"reconciler.yaml": "defaults:\n  policy:\n    require_signed: true\n"})
    assert load_environment(defaults, "test").policy.require_signed is True


def test_require_signed_must_be_a_boolean():
    text = ENV.replace("  require_digest: true\n", "  require_digest: true\n  require_signed: yes please\n")
    assert validate(snapshot(env=text)) == [
        "environments/test/environment.yaml:7:19: policy.require_signed: expected true or false, got a string"]


def test_policy_of_reads_the_requirement_when_the_rest_does_not_validate():
    text = ENV.replace("  require_digest: true\n", "  require_digest: true\n  require_signed: true\n  drift: sometimes\n") + "bogus: 1\n"
    snap = snapshot(env=text)
    assert len(validate(snap)) == 2  # the unknown key and the bad drift
    assert policy_of(snap, "test").require_signed is True
    # A file that is not YAML at all has no policy to read: the model's defaults.
    assert policy_of(snapshot(env="hosts: [\n"), "test") == Policy()
