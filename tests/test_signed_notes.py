"""The agent's notes commits are signed with its key (issue 12), and
``history --verify-notes`` tells an attempt the agent wrote from one that
someone else put in the notes: unsigned (``git notes``), or signed by a key
that is trusted for commits but is not the agent's."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import pygit2
import pytest

from agentrepo import commit, files_for, init
from reconciler.adapters import gitlog, gitsign, notes_trust, signatures
from reconciler.cli.main import main
from reconciler.core.model import Policy
from reconciler.core.record import Attempt
from signing import make_keys

AGENT = "agent@example.com"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = make_keys(tmp_path_factory.mktemp("keys"), ssh=("agent", "alice", "mallory"), pgp=(), trusted=("agent", "alice"))
    yield made
    made.close()


@pytest.fixture
def repo(tmp_path):
    return init(tmp_path / "repo", bare=True)


def history(repo, keys, *extra) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["history", "--repo", repo.path, "--verify-notes", "--allowed-signers", str(keys.allowed_signers), *extra])
    return code, out.getvalue()


def notes_tip(repo) -> pygit2.Commit:
    return repo[repo.references[gitlog.NOTES_REF].target].peel(pygit2.Commit)


def test_the_notes_commit_is_signed_by_the_agent_and_verifies_against_allowed_signers(repo, keys):
    c1 = commit(repo, files_for(), "first")
    gitlog.append_attempt(repo, Attempt("staging", c1, "deployed", finished=5.0), signing_key=str(keys.ssh["agent"]))
    tip = notes_tip(repo)
    assert tip.gpg_signature[0] is not None and tip.gpg_signature[0].startswith(b"-----BEGIN SSH SIGNATURE-----")
    signer = signatures.verify_commit(repo, str(tip.id), Policy(require_signed=True), signatures.Trust(keys.allowed_signers))
    assert (signer.kind, signer.principal, signer.fingerprint) == ("ssh", AGENT, keys.ssh_fingerprint("agent"))
    # git itself agrees (the format git verify-commit checks).
    verified = subprocess.run(["git", "-c", f"gpg.ssh.allowedSignersFile={keys.allowed_signers}", "verify-commit", str(tip.id)],
                              cwd=repo.path, capture_output=True, text=True)
    assert verified.returncode == 0 and f'Good "git" signature for {AGENT}' in verified.stderr, verified.stderr
    assert gitlog.latest(repo, c1, "staging").result == "deployed"  # the note reads as before

    # A second attempt: a second signed notes commit on top of the first.
    gitlog.append_attempt(repo, Attempt("staging", c1, "in-sync", finished=6.0), signing_key=str(keys.ssh["agent"]))
    assert notes_tip(repo).parents[0].id == tip.id
    assert [a.result for a in gitlog.attempts(repo, c1)] == ["deployed", "in-sync"]
    code, out = history(repo, keys, "--agent-principal", AGENT)
    assert code == 0, out
    assert out.count(f"note signed by {AGENT} (ssh {keys.ssh_fingerprint('agent')})") == 2, out


def test_an_unsigned_note_and_one_signed_by_another_trusted_key_are_not_the_agents(repo, keys, tmp_path):
    c1 = commit(repo, files_for(), "first")
    gitlog.append_attempt(repo, Attempt("staging", c1, "failed", finished=5.0, reason="HealthCheckFailed"),
                          signing_key=str(keys.ssh["agent"]))
    # Someone with write access forges a later "deployed" attempt, unsigned.
    gitlog.append_attempt(repo, Attempt("staging", c1, "deployed", finished=7.0))
    code, out = history(repo, keys)
    assert code == 1, out
    assert f"note signed by {AGENT}" in out
    assert "note NOT signed by the agent" in out and "is not signed" in out, out
    assert "1 attempt(s) in the notes were not written by the agent" in out

    # Signed by alice: trusted for commits, but not the agent's key.
    gitlog.append_attempt(repo, Attempt("staging", c1, "in-sync", finished=8.0), signing_key=str(keys.ssh["alice"]))
    code, out = history(repo, keys)
    assert code == 1 and out.count("note NOT signed by the agent") == 1, out  # any trusted key, without --agent-principal
    code, out = history(repo, keys, "--agent-principal", AGENT, "--json")
    assert code == 1
    notes = {a["result"]: a["note"] for e in json.loads(out) for a in e["attempts"]}
    assert notes["failed"]["trusted"] and notes["failed"]["signer"].startswith(AGENT)
    assert not notes["deployed"]["trusted"] and notes["deployed"]["signer"] is None
    assert not notes["in-sync"]["trusted"] and "not by the agent's key" in notes["in-sync"]["problem"]

    # Signed by a key nobody trusts: refused with git's words for it.
    gitlog.append_attempt(repo, Attempt("staging", c1, "refused", finished=9.0), signing_key=str(keys.ssh["mallory"]))
    found = notes_trust.writers(repo, signatures.Trust(keys.allowed_signers))
    (refused,) = [w for (c, k), w in found.items() if '"refused"' in k]
    assert not refused.trusted and "does not trust" in refused.problem


def test_a_forged_change_to_an_existing_attempt_is_attributed_to_the_forger(repo, keys):
    c1 = commit(repo, files_for(), "first")
    gitlog.append_attempt(repo, Attempt("staging", c1, "failed", finished=5.0), signing_key=str(keys.ssh["agent"]))
    text = repo.lookup_note(c1, gitlog.NOTES_REF).message
    forged = text.replace('"result": "failed"', '"result": "deployed"').replace("staging failed", "staging deployed")
    assert forged != text
    sig = pygit2.Signature("someone", "s@x")
    repo.create_note(forged, sig, sig, c1, gitlog.NOTES_REF, True)
    assert gitlog.latest(repo, c1, "staging").result == "deployed"
    code, out = history(repo, keys)
    assert code == 1 and "note NOT signed by the agent" in out and f"note signed by {AGENT}" not in out, out


def test_a_key_the_agent_cannot_use_stops_it_at_start(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(Exception, match="signing the agent's commit"):
        gitsign.sign("x\n", str(missing))
