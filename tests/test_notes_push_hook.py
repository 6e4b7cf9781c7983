"""The record cannot be forged through a push (issue 12): the pre-receive hook,
driven by real `git push`es into a bare repository, guards the agent's notes
ref.  A deletion or a rewrite is always refused; where the repository has an
agent to answer for the notes (reconciler.agentPrincipal, or an environment
with policy.require_signed), so is every notes commit the agent's key did
not sign.  The agent writes its notes straight into the repository, past the
hook, and is not affected."""

from __future__ import annotations

import pygit2
import pytest

from agentrepo import files_for
from reconciler.adapters import gitlog
from reconciler.cli.commands.install_hooks import package_dir
from reconciler.cli.main import main
from reconciler.core.record import Attempt
from signing import git, make_keys, signed_commit
from test_signed_push_hook import signed_env

AGENT = "agent@example.com"
NOTES = gitlog.NOTES_REF
ENV_FILE = "environments/staging/environment.yaml"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = make_keys(tmp_path_factory.mktemp("keys"), ssh=("agent", "alice", "mallory"), pgp=(), trusted=("agent", "alice"))
    yield made
    made.close()


def make(tmp_path, keys, *, required: bool = True, principal: str | None = AGENT):
    """A bare repository with the hooks (and the trust root in its git
    config), one signed deploy noted by the agent, and a clone that has
    fetched the notes."""
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    git(bare, "config", "reconciler.allowedSigners", str(keys.allowed_signers))
    if principal:
        git(bare, "config", "reconciler.agentPrincipal", principal)
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    for path, text in {**files_for(), ENV_FILE: signed_env(required=required)}.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    git(work, "add", "-A")
    first = signed_commit(work, keys, "alice", "web v1")
    pushed = git(work, "push", "origin", "main", check=False)
    assert pushed.returncode == 0, pushed.stderr
    # The agent notes its deploy in its own repository: no push, no hook.
    gitlog.append_attempt(pygit2.Repository(str(bare)), Attempt("staging", first, "deployed", finished=5.0),
                          signing_key=str(keys.ssh["agent"]))
    fetch_notes(work)
    return bare, work, first


def fetch_notes(work) -> None:
    git(work, "fetch", "-q", "origin", f"+{NOTES}:{NOTES}")


def notes_tip(repo_path) -> str | None:
    ref = pygit2.Repository(str(repo_path)).references.get(NOTES)
    return str(ref.target) if ref is not None else None


def note_as(work, commit: str, result: str, signer: str | None, keys) -> str:
    """A notes commit in the clone adding an attempt, signed by ``signer``'s
    key (None: unsigned, as `git notes add` writes it)."""
    gitlog.append_attempt(pygit2.Repository(str(work)), Attempt("staging", commit, result, finished=9.0),
                          signing_key=str(keys.ssh[signer]) if signer else None)
    return notes_tip(work)


def push_notes(work, *, force: bool = False, refspec: str | None = None):
    return git(work, "push", "origin", refspec or f"{'+' if force else ''}{NOTES}:{NOTES}", check=False)


def refused(result, *words: str) -> None:
    assert result.returncode != 0, result.stderr
    assert f"refusing the update of {NOTES}: it is the agent's deployment record" in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_the_hook_runs_the_checks_of_the_installation_that_installed_it(tmp_path, keys):
    bare, _, _ = make(tmp_path, keys)
    hook = (bare / "hooks" / "pre-receive").read_text()
    assert f"PACKAGE={package_dir()}\n" in hook and "@PACKAGE@" not in hook
    assert '"$PYTHON" -I -c' in hook  # still isolated from the pusher's PYTHON* variables and work tree


@pytest.mark.parametrize("signer, reason", [(None, "it is not signed"),
                                            ("alice", "a key trusted for commits but not the agent's"),
                                            ("mallory", "signed by an SSH key the agent does not trust")],
                         ids=["unsigned", "committer-key", "untrusted-key"])
def test_a_notes_commit_the_agent_did_not_sign_is_refused(tmp_path, keys, signer, reason):
    bare, work, first = make(tmp_path, keys)
    before = notes_tip(bare)
    forged = note_as(work, first, "rolled-back", signer, keys)
    result = push_notes(work)
    refused(result, f"notes commit {forged[:12]} is not the agent's ({AGENT})", reason)
    assert notes_tip(bare) == before
    assert [a.result for a in gitlog.attempts(pygit2.Repository(str(bare)), first)] == ["deployed"]


def test_an_unsigned_commit_under_signed_ones_is_refused_too(tmp_path, keys):
    bare, work, first = make(tmp_path, keys)
    before = notes_tip(bare)
    forged = note_as(work, first, "failed", None, keys)
    note_as(work, first, "in-sync", "agent", keys)  # a signed tip does not vouch for its parents
    refused(push_notes(work), f"notes commit {forged[:12]}", "it is not signed")
    assert notes_tip(bare) == before


def test_notes_signed_by_the_agent_are_accepted(tmp_path, keys):
    """As the agent's mirror pushes them to a hosted repository."""
    bare, work, first = make(tmp_path, keys)
    new = note_as(work, first, "in-sync", "agent", keys)
    result = push_notes(work)
    assert result.returncode == 0, result.stderr
    assert notes_tip(bare) == new


def test_deleting_or_rewriting_the_notes_is_refused_even_without_a_trust_root(tmp_path, keys):
    bare, work, first = make(tmp_path, keys, required=False, principal=None)
    git(bare, "config", "--unset", "reconciler.allowedSigners")
    before = notes_tip(bare)
    refused(push_notes(work, refspec=f":{NOTES}"), f"{NOTES} may not be deleted")
    assert notes_tip(bare) == before

    # A rewrite: the clone's notes replaced by a history of its own.
    git(work, "update-ref", "-d", NOTES)
    other = note_as(work, first, "deployed", None, keys)
    refused(push_notes(work, force=True), "non-fast-forward update", f"{before[:12]} is not an ancestor of {other[:12]}",
            "append-only")
    assert notes_tip(bare) == before

    # Nobody to answer for the notes (no require_signed, no agent principal):
    # a fast-forward is accepted, signed or not.
    fetch_notes(work)
    added = note_as(work, first, "in-sync", None, keys)
    assert push_notes(work).returncode == 0
    assert notes_tip(bare) == added


def test_require_signed_without_an_agent_principal_refuses_notes_and_says_what_to_configure(tmp_path, keys):
    bare, work, first = make(tmp_path, keys, principal=None)
    before = notes_tip(bare)
    note_as(work, first, "in-sync", "agent", keys)
    refused(push_notes(work), "staging require(s) signed commits", "set git config reconciler.agentPrincipal")
    assert notes_tip(bare) == before


def test_a_replace_ref_is_refused(tmp_path, keys):
    bare, work, first = make(tmp_path, keys)
    (work / "README").write_text("what the auditor should see\n")
    git(work, "add", "-A")
    fake = signed_commit(work, keys, None, "web v1 (forged)")
    git(work, "replace", first, fake)
    result = git(work, "push", "origin", f"refs/replace/{first}", check=False)
    assert result.returncode != 0 and f"refusing refs/replace/{first}" in result.stderr, result.stderr
    assert f"refs/replace/{first}" not in pygit2.Repository(str(bare)).references


def test_branches_are_checked_as_before_in_the_same_push(tmp_path, keys):
    bare, work, first = make(tmp_path, keys)
    (work / "README").write_text("v2\n")
    git(work, "add", "-A")
    signed = signed_commit(work, keys, "alice", "readme")
    note_as(work, signed, "deployed", None, keys)
    result = git(work, "push", "--atomic", "origin", "main", f"{NOTES}:{NOTES}", check=False)
    refused(result, "it is not signed")
    assert git(bare, "rev-parse", "main").stdout.strip() == first


@pytest.mark.parametrize("edit", ["result", "summary", "foreign"])
def test_a_fast_forward_that_rewrites_the_record_is_refused_even_without_a_trust_root(tmp_path, keys, edit):
    """The agent only ever appends attempts, rendered by core.record: a notes
    commit that changes a recorded attempt, edits the summary line `git log
    --notes` shows, or writes a note of its own is no append."""
    bare, work, first = make(tmp_path, keys, required=False, principal=None)
    git(bare, "config", "--unset", "reconciler.allowedSigners")
    before = notes_tip(bare)
    note = git(work, "notes", "--ref", "reconciler", "show", first).stdout
    forged = {"result": note.replace('"result": "deployed"', '"result": "failed"'),
              "summary": note.replace("staging deployed", "staging failed", 1),
              "foreign": "deployed by hand, all fine\n"}[edit]
    assert forged != note
    (tmp_path / "forged").write_text(forged)
    git(work, "notes", "--ref", "reconciler", "add", "-f", "-F", str(tmp_path / "forged"), first)
    reason = {"result": "changes or drops attempts already recorded", "summary": "is not the agent's record",
              "foreign": "changes or drops attempts already recorded"}[edit]
    refused(push_notes(work), f"for {first[:12]}" if edit == "result" else f"on {first[:12]}" if edit == "summary" else first[:12],
            reason)
    assert notes_tip(bare) == before


def test_install_hooks_writes_the_trust_root_the_hook_reads(tmp_path, keys, capsys):
    bare, work, first = make(tmp_path, keys, principal=None)
    git(bare, "config", "--unset", "reconciler.allowedSigners")
    assert main(["install-hooks", str(bare), "--allowed-signers", str(keys.allowed_signers),
                 "--agent-principal", "nobody@example.com"]) != 0
    assert "--agent-principal nobody@example.com: no such principal" in capsys.readouterr().err
    assert "reconciler.allowedSigners" not in pygit2.Repository(str(bare)).config  # nothing half-written
    assert main(["install-hooks", str(bare), "--allowed-signers", str(keys.allowed_signers), "--agent-principal", AGENT]) == 0
    config = pygit2.Repository(str(bare)).config
    assert (config["reconciler.allowedSigners"], config["reconciler.agentPrincipal"]) == (str(keys.allowed_signers.resolve()), AGENT)
    forged = note_as(work, first, "rolled-back", "alice", keys)
    refused(push_notes(work), f"notes commit {forged[:12]} is not the agent's ({AGENT})")
