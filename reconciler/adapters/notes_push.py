"""The pre-receive hook's rule for the agent's own refs: the record cannot be
forged through a push.

``refs/notes/reconciler`` holds the note of every deploy, and auditors read
``git log`` with those notes as the deployment log.  The agent writes it
straight into its repository (``gitlog.append_attempt``, no push, so no hook
runs), signing every notes commit with its ``--signing-key``.  A push that
touches it is somebody else (or the agent's mirror pushing to a hosted
repository), and is refused:

- always when it deletes the ref or is not a fast-forward (the record is
  append-only; git's own ``receive.denyNonFastForwards`` covers branches
  only when configured, and never deletions), or when a notes commit it
  adds changes or drops an attempt already recorded, or writes a note that
  is not exactly the agent's rendering of its attempts (the summary lines
  are what ``git log --notes`` shows: they cannot be edited apart from the
  attempts);
- when the repository has an agent to answer for the notes (git config
  ``reconciler.agentPrincipal``, or an environment whose
  ``policy.require_signed`` is on at the head of the branch it follows),
  unless every notes commit the push adds is signed by the agent's key:
  verified against the same trust root as commits (``signatures.Trust``:
  ``allowed_signers`` outside the repository) and naming the agent's
  principal.  With require_signed and no principal configured there is no
  telling the agent's key from a committer's, so the push is refused and the
  message says what to configure.
"""

from __future__ import annotations

import os

import pygit2

from reconciler.adapters import gitlog, source
from reconciler.adapters.notes_trust import notes_of
from reconciler.adapters.signatures import Trust, verify_commit
from reconciler.core import record, schema
from reconciler.core.model import Policy
from reconciler.errors import BadSignature, ReconcilerError, UnsignedCommit

# The refs only the agent writes (freezes and locks are files in its state
# directory, not refs).
AGENT_REFS = (gitlog.NOTES_REF,)
_ZERO = "0" * 40
MAX_COMMITS = 1000


def signing_environments(repo: pygit2.Repository, repo_path: str | os.PathLike[str]) -> list[str]:
    """The environments whose policy, at the head of the branch each follows,
    has require_signed: their deploys are in the notes, so the notes must be
    the agent's own."""
    found = []
    for ref in sorted(r for r in repo.references if r.startswith("refs/heads/")):
        head = gitlog.branch_head(repo, ref)
        try:
            snapshot = source.snapshot_commit(repo_path, head)
            envs = schema.list_environments(snapshot)
        except ReconcilerError:
            continue  # a branch that holds no desired state
        for env in envs:
            try:
                follows = gitlog.environment_branch(repo, env) == ref
            except ReconcilerError:
                follows = False
            if follows and schema.policy_of(snapshot, env).require_signed:
                found.append(env)
    return sorted(set(found))


def _added(repo: pygit2.Repository, old: str | None, new: str) -> list[pygit2.Commit]:
    walker = repo.walk(pygit2.Oid(hex=new), pygit2.enums.SortMode.TOPOLOGICAL)
    if old is not None:
        walker.hide(pygit2.Oid(hex=old))
    out = []
    for commit in walker:
        out.append(commit)
        if len(out) > MAX_COMMITS:
            break
    return out


def rewrites(repo: pygit2.Repository, notes_commit: pygit2.Commit, ref: str = gitlog.NOTES_REF) -> list[str]:
    """What ``notes_commit`` changes in the record other than by appending
    attempts, against its first parent (one line each)."""
    parent = notes_commit.parents[0] if notes_commit.parents else None
    mine, theirs = notes_of(repo, notes_commit.tree), notes_of(repo, parent.tree if parent else None)
    short = str(notes_commit.id)[:12]
    found = []
    for commit in sorted(set(mine) | set(theirs)):
        if mine.get(commit) == theirs.get(commit):
            continue
        if commit not in mine:
            found.append(f"{ref}: notes commit {short} drops the note of {commit[:12]}: the record is append-only")
            continue
        text = repo[mine[commit]].data.decode("utf-8", "replace")
        new = record.parse(text, commit)
        old = record.parse(repo[theirs[commit]].data.decode("utf-8", "replace"), commit) if commit in theirs else ()
        if [record.to_json(a) for a in new[:len(old)]] != [record.to_json(a) for a in old]:
            found.append(f"{ref}: notes commit {short} changes or drops attempts already recorded for {commit[:12]}: "
                         "the record is append-only")
        elif not new or text != record.render(new):
            found.append(f"{ref}: notes commit {short} writes a note on {commit[:12]} that is not the agent's record "
                         "(its text is not the rendering of its attempts)")
    return found


def check(repo_path: str | os.PathLike[str], ref: str, old: str, new: str, trust: Trust | None = None) -> list[str]:
    """Why the update of the agent's ``ref`` from ``old`` to ``new`` is
    refused (one line each), or an empty list."""
    if ref not in AGENT_REFS:
        return []
    if new == _ZERO:
        return [f"{ref} may not be deleted: it is the only record of what ran where"]
    repo = source.open_repository(repo_path)
    try:
        tip = repo[pygit2.Oid(hex=new)].peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        return [f"{ref}: {new[:12]} is not a commit"]
    previous = None if old == _ZERO else old
    if previous is not None and not repo.descendant_of(tip.id, pygit2.Oid(hex=previous)):
        return [f"{ref}: non-fast-forward update ({previous[:12]} is not an ancestor of {new[:12]}): "
                "the record is append-only; nothing may rewrite or drop what it says"]
    commits = _added(repo, previous, new)
    if len(commits) > MAX_COMMITS:
        return [f"{ref}: the push adds more than {MAX_COMMITS} notes commits; push it in parts"]
    changed = [line for commit in commits for line in rewrites(repo, commit, ref)]
    if changed:
        return changed
    trust = trust or Trust.from_environment(repo)
    envs = [] if trust.agent_principal else signing_environments(repo, repo_path)
    if not trust.agent_principal and not envs:
        return []  # nobody to answer for the notes: a fast-forward is accepted
    if not trust.agent_principal:
        return [f"{ref}: {', '.join(envs)} require(s) signed commits (policy.require_signed), so the notes must be "
                "signed by the agent's key, and no agent principal is configured to tell it from a committer's: "
                "set git config reconciler.agentPrincipal (the agent's principal in allowed_signers) in this repository"]
    refusals = []
    for commit in commits:
        short = str(commit.id)[:12]
        what = f"{ref}: notes commit {short} is not the agent's ({trust.agent_principal})"
        try:
            signer = verify_commit(repo, str(commit.id), Policy(require_signed=True), trust, environment=ref)
        except UnsignedCommit:
            refusals.append(f"{what}: it is not signed; only the agent writes the notes, signed with its key")
            continue
        except BadSignature as exc:
            refusals.append(f"{what}: {str(exc).replace(f'{ref}: commit {short}: ', '', 1)}")
            continue
        if signer is None or signer.principal != trust.agent_principal:
            refusals.append(f"{what}: it is signed by {signer}, a key trusted for commits but not the agent's")
    return refusals
