"""Who wrote each attempt in the notes: the notes commit that added it, and
whether that commit carries the agent's signature.

Anyone who can push ``refs/notes/reconciler`` (or run ``git notes`` in the
agent's repository) can write a note that reads like the agent's.  The agent
signs every notes commit with ``--signing-key`` (``gitsign``), so an attempt
is the agent's when the notes commit that added it verifies against the
trust root (``signatures.Trust``: the agent's public key in
``allowed_signers``) and, when ``agent`` is given, names that principal.

The notes ref's history is walked once (each commit against its first
parent): an attempt in a note that its parent's note lacks was written by
that commit.  One signature check per notes commit (two ``ssh-keygen`` runs):
``history --verify-notes`` asks for it, plain ``history`` does not pay it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pygit2

from reconciler.adapters.signatures import Signer, Trust, verify_commit
from reconciler.core import record
from reconciler.core.model import Policy
from reconciler.errors import BadSignature, StalledError, UnsignedCommit

NOTES_REF = "refs/notes/reconciler"
_REQUIRED = Policy(require_signed=True)


@dataclass(frozen=True)
class NoteWriter:
    notes_commit: str
    signer: Signer | None  # verified; None when unsigned or not verifiable
    problem: str  # "" when the note is the agent's

    @property
    def trusted(self) -> bool:
        return not self.problem

    def describe(self) -> str:
        if self.trusted:
            return f"note signed by {self.signer} in {self.notes_commit[:12]}"
        return f"note NOT signed by the agent ({self.notes_commit[:12]}): {self.problem}"


def attempt_key(commit: str, attempt: record.Attempt) -> tuple[str, str]:
    return commit, json.dumps(record.to_json(attempt), sort_keys=True, default=str)


def notes_of(repo: pygit2.Repository, tree: pygit2.Tree | None, prefix: str = "") -> dict[str, pygit2.Oid]:
    """annotated commit -> note blob, through any fanout (``ab/cdef...``)."""
    found: dict[str, pygit2.Oid] = {}
    if tree is None:
        return found
    for entry in tree:
        if entry.type_str == "tree":
            found.update(notes_of(repo, repo[entry.id], prefix + entry.name))
        else:
            found[prefix + entry.name] = entry.id
    return found


def _keys(repo: pygit2.Repository, commit: str, blob: pygit2.Oid | None) -> list[tuple[str, str]]:
    if blob is None:
        return []
    return [attempt_key(commit, a) for a in record.parse(repo[blob].data.decode("utf-8", "replace"), commit)]


def _check(repo: pygit2.Repository, notes_commit: pygit2.Commit, trust: Trust, agent: str | None) -> NoteWriter:
    cid = str(notes_commit.id)
    try:
        signer = verify_commit(repo, cid, _REQUIRED, trust, environment="notes")
    except (UnsignedCommit, BadSignature) as exc:
        return NoteWriter(cid, None, str(exc).replace(f"notes: commit {cid[:12]}", "the notes commit", 1))
    if agent is not None and signer is not None and signer.principal != agent:
        return NoteWriter(cid, signer, f"signed by {signer}, not by the agent's key ({agent})")
    return NoteWriter(cid, signer, "")


def writers(repo: pygit2.Repository, trust: Trust, *, agent: str | None = None,
            limit: int = 100_000) -> dict[tuple[str, str], NoteWriter]:
    """``attempt_key(commit, attempt)`` -> who wrote that attempt, for every
    attempt the notes ref's history added (newest notes commit first)."""
    reference = repo.references.get(NOTES_REF)
    if reference is None:
        return {}
    out: dict[tuple[str, str], NoteWriter] = {}
    current = repo[reference.target].peel(pygit2.Commit)
    for _ in range(limit):
        parent = current.parents[0] if current.parents else None
        mine, theirs = notes_of(repo, current.tree), notes_of(repo, parent.tree if parent else None)
        changed = [c for c, blob in mine.items() if theirs.get(c) != blob]
        added = []
        for commit in changed:
            before = set(_keys(repo, commit, theirs.get(commit)))
            added += [k for k in _keys(repo, commit, mine[commit]) if k not in before]
        if added:
            writer = _check(repo, current, trust, agent)
            for key in added:
                out.setdefault(key, writer)  # the newest commit that added it (a rewrite adds it again)
        if parent is None:
            break
        current = parent
    else:
        raise StalledError(f"{NOTES_REF}: more than {limit} notes commits; verify fewer")
    return out
