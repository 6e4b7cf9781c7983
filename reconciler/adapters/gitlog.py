"""Git as the deployment log: notes, revert commits, history.  pygit2 only.

Every engine run becomes an attempt appended to the note of its commit under
``refs/notes/reconciler``; what a note says (typed attempts, append-only,
several environments per commit) is ``reconciler.core.record``'s, and this
module only reads and writes it and makes the agent's own commits (the
revert after a rollback).  Walking the history is ``githistory``'s; the
promote/revert/lever commits a person asks for are ``gitedit``'s.

Which branch an environment follows: ``git config reconciler.<env>.branch``,
else a branch named like the environment, else the branch HEAD names.
"""

from __future__ import annotations

import os
import socket
from typing import Iterable

import pygit2

from reconciler.core import record
from reconciler.core.record import Attempt
from reconciler.errors import StalledError

NOTES_REF = "refs/notes/reconciler"


def open_repo(path: str | os.PathLike[str]) -> pygit2.Repository:
    found = pygit2.discover_repository(str(path))
    if found is None:
        raise StalledError(f"{path}: not a git repository")
    return pygit2.Repository(found)


def agent_signature(name: str | None = None, email: str | None = None) -> pygit2.Signature:
    return pygit2.Signature(name or "reconciler agent", email or f"reconciler@{socket.gethostname()}")


def user_signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return agent_signature()


# ---------------------------------------------------------------- branches


def environment_branch(repo: pygit2.Repository, env: str) -> str:
    """The full ref name of the branch ``env`` follows."""
    try:
        configured = repo.config[f"reconciler.{env}.branch"]
    except KeyError:
        configured = None
    if configured:
        return configured if configured.startswith("refs/") else f"refs/heads/{configured}"
    if f"refs/heads/{env}" in repo.references:
        return f"refs/heads/{env}"
    head = repo.references.get("HEAD")
    if head is None or head.type != pygit2.enums.ReferenceType.SYMBOLIC:
        raise StalledError(f"{env}: no branch {env!r} and HEAD names no branch; set git config reconciler.{env}.branch")
    return head.target


def branch_head(repo: pygit2.Repository, ref: str) -> str | None:
    reference = repo.references.get(ref)
    return str(reference.resolve().target) if reference is not None else None


def commits_between(repo: pygit2.Repository, old: str | None, new: str, limit: int = 200) -> list[str]:
    """Commits reachable from ``new`` but not ``old``, newest first, ``new`` excluded."""
    if old is None or old == new:
        return []
    walker = repo.walk(pygit2.Oid(hex=new), pygit2.enums.SortMode.TOPOLOGICAL)
    try:
        walker.hide(pygit2.Oid(hex=old))
    except (KeyError, ValueError, pygit2.GitError):
        return []  # history rewritten under us: nothing sensible to mark
    out = []
    for commit in walker:
        if str(commit.id) != new:
            out.append(str(commit.id))
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- notes
# What a note says is reconciler.core.record's; this only reads and writes it.


def attempts(repo: pygit2.Repository, commit: str, env: str | None = None) -> tuple[Attempt, ...]:
    """The attempts ``commit``'s note records (of ``env``), oldest first."""
    try:
        note = repo.lookup_note(commit, NOTES_REF)
    except KeyError:
        return ()
    found = record.parse(note.message, commit)
    return tuple(a for a in found if env is None or a.environment == env)


def latest(repo: pygit2.Repository, commit: str, env: str) -> Attempt | None:
    """The newest attempt on ``commit`` for ``env`` (None when it has none)."""
    found = attempts(repo, commit, env)
    return found[-1] if found else None


def append_attempt(repo: pygit2.Repository, attempt: Attempt, signature: pygit2.Signature | None = None,
                   signing_key: str | None = None) -> None:
    """Add ``attempt`` to its commit's note; every earlier attempt stays as it was.

    With ``signing_key`` the notes commit is signed like the agent's revert
    commits (``gitsign``), so ``history --verify-notes`` can tell the
    agent's record from a note anyone else wrote.

    One engine run per environment at a time (the lock), so the only race is
    two environments noting the same commit at once: each appends to what it
    read, and the loser's attempt is the one lost.
    """
    note = record.render(record.append(attempts(repo, attempt.commit), attempt))
    sig = signature or agent_signature()
    repo.create_note(note, sig, sig, attempt.commit, NOTES_REF, True)
    if signing_key:
        from reconciler.adapters import gitsign

        gitsign.sign_tip(repo, NOTES_REF, signing_key)


def mark_superseded(repo: pygit2.Repository, env: str, commits: Iterable[str], by: str, at: float,
                    actor: str = "", signature: pygit2.Signature | None = None, signing_key: str | None = None) -> list[str]:
    """Record ``commits`` (skipped by coalescing) as superseded, unless they have an attempt already."""
    marked = []
    for commit in commits:
        if attempts(repo, commit, env):
            continue
        append_attempt(repo, Attempt(env, commit, "superseded", superseded_by=by, started=at, finished=at, actor=actor,
                                     reason="Superseded", trigger="coalesced"), signature, signing_key)
        marked.append(commit)
    return marked


def last_deployed(repo: pygit2.Repository, env: str, branch_ref: str, limit: int = 1000) -> str | None:
    """The newest commit on ``env``'s branch whose note says it ran there."""
    head = branch_head(repo, branch_ref)
    if head is None:
        return None
    for n, commit in enumerate(repo.walk(pygit2.Oid(hex=head), pygit2.enums.SortMode.TOPOLOGICAL)):
        if any(a.ran for a in attempts(repo, str(commit.id), env)):
            return str(commit.id)
        if n >= limit:
            break
    return None


# ---------------------------------------------------------------- revert after rollback


def environment_paths(env: str) -> tuple[str, ...]:
    """What shapes ``env``'s desired state: its directory and the shared defaults."""
    return (f"environments/{env}/", "reconciler.yaml")


def revert_failed(
    repo: pygit2.Repository,
    *,
    env: str,
    branch_ref: str,
    failed: str,
    base: str | None,
    why: str,
    signature: pygit2.Signature | None = None,
    signing_key: str | None = None,
) -> str | None:
    """Commit onto ``branch_ref`` the environment's files as they were at ``base``.

    Only when the branch still points at ``failed`` (a newer push wins: it is
    reconciled next anyway).  Only ``env``'s paths change, so a repository
    holding several environments keeps the others' changes.  Returns the new
    commit id, or None when there is nothing to revert.
    """
    failed_commit = repo[pygit2.Oid(hex=failed)]
    if base is None:
        if not failed_commit.parents:
            return None
        base = str(failed_commit.parents[0].id)
    subject = failed_commit.message.splitlines()[0] if failed_commit.message else failed[:12]
    message = (
        f'Revert "{subject}" in {env}\n\n'
        f"The deploy of {failed[:12]} to {env} {why}\n"
        f"and {env} runs {base[:12]} again; this commit makes the branch say\n"
        f"what {env} runs.\n\n"
        f"This reverts commit {failed}.\n"
    )
    return set_environment_to(repo, env=env, branch_ref=branch_ref, head=failed, source=base,
                              message=message, signature=signature, signing_key=signing_key)


def set_environment_to(repo: pygit2.Repository, *, env: str, branch_ref: str, head: str, source: str,
                       message: str, signature: pygit2.Signature | None = None,
                       signing_key: str | None = None) -> str | None:
    """A commit on ``branch_ref`` (which must still be at ``head``) whose
    ``env`` paths are those of ``source``; None when nothing would change or
    the branch moved (a push won)."""
    if branch_head(repo, branch_ref) != head:
        return None
    head_commit = repo[pygit2.Oid(hex=head)]
    source_commit = repo[pygit2.Oid(hex=source)]
    index = pygit2.Index()
    index.read_tree(head_commit.tree)
    prefixes = environment_paths(env)
    for entry in list(index):
        if under(entry.path, prefixes):
            index.remove(entry.path)
    source_index = pygit2.Index()
    source_index.read_tree(source_commit.tree)
    for entry in source_index:
        if under(entry.path, prefixes):
            index.add(pygit2.IndexEntry(entry.path, entry.id, entry.mode))
    tree = index.write_tree(repo)
    if tree == head_commit.tree.id:
        return None
    sig = signature or agent_signature()
    if signing_key:
        return signed_commit(repo, branch_ref, sig, message, tree, head_commit.id, signing_key)
    try:
        new = repo.create_commit(branch_ref, sig, sig, message, tree, [head_commit.id])
    except (pygit2.GitError, ValueError):
        return None  # the branch moved between our check and the update: a push won
    return str(new)


def signed_commit(repo: pygit2.Repository, branch_ref: str, sig: pygit2.Signature, message: str, tree,
                   parent: pygit2.Oid, signing_key: str) -> str | None:
    """The commit, signed with the agent's SSH key (``gitsign``), so that
    policy.require_signed trusts the agent's own reverts once its key is in
    allowed_signers."""
    from reconciler.adapters import gitsign

    new = gitsign.signed_commit(repo, sig, sig, message, tree, [parent], signing_key)
    # The branch moves only if it still points at the parent (a push wins);
    # libgit2's set_target fails if the ref moved since it was read.
    reference = repo.references.get(branch_ref)
    if reference is None or reference.target != parent:
        return None
    try:
        reference.set_target(new, f"reconciler: {message.splitlines()[0]}")
    except pygit2.GitError:
        return None
    return str(new)


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes)
