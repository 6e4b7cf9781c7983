"""Git as the deployment log: notes, revert commits, history.  pygit2 only.

Every reconcile outcome becomes a git note on the deployed commit under
``refs/notes/reconciler``.  The note body is a human summary (one line per
environment) then a blank line then JSON::

    reconciler: staging deployed 1a2b3c4d5e6f on h2,h3 at 2024-05-01T10:00:00Z (12.3s)

    {"reconciler": 1, "environments": {"staging": {...record...}}}

One commit can be deployed to several environments (a repository holds
them all), so the JSON keeps one record per environment and a write merges
into what is there.  Records carry ``result`` (deployed | rolled-back |
failed | superseded), hosts, resolved digests, start/end, health evidence.

Which branch an environment follows: ``git config reconciler.<env>.branch``,
else a branch named like the environment, else the branch HEAD names.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pygit2

from reconciler.errors import StalledError

NOTES_REF = "refs/notes/reconciler"
NOTE_VERSION = 1
RESULTS = ("deployed", "rolled-back", "failed", "superseded")
# Results after which the environment ran this commit's desired state.
RAN = ("deployed",)


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


def read_note(repo: pygit2.Repository, commit: str) -> dict:
    """The JSON document of ``commit``'s note ({} when it has none)."""
    try:
        note = repo.lookup_note(commit, NOTES_REF)
    except KeyError:
        return {}
    return parse_note(note.message)


def parse_note(message: str) -> dict:
    start = message.find("\n{")
    body = message[start + 1 :] if start >= 0 else (message if message.startswith("{") else "")
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def env_record(repo: pygit2.Repository, commit: str, env: str) -> dict | None:
    return read_note(repo, commit).get("environments", {}).get(env)


def summary_line(env: str, record: dict) -> str:
    commit = record.get("commit", "")[:12]
    result = record.get("result", "?")
    hosts = ",".join(record.get("hosts", [])) or "-"
    finished = record.get("finished") or record.get("started") or 0
    took = ""
    if record.get("finished") and record.get("started"):
        took = f" ({record['finished'] - record['started']:.1f}s)"
    line = f"reconciler: {env} {result} {commit} on {hosts} at {iso(finished)}{took}"
    if record.get("failure"):
        line += f": {record['failure'].splitlines()[0]}"
    if record.get("superseded_by"):
        line += f" by {record['superseded_by'][:12]}"
    return line


def write_note(repo: pygit2.Repository, commit: str, env: str, record: dict, signature: pygit2.Signature | None = None) -> None:
    """Merge ``record`` as ``env``'s record into ``commit``'s note."""
    doc = read_note(repo, commit) or {}
    doc["reconciler"] = NOTE_VERSION
    envs = doc.setdefault("environments", {})
    envs[env] = {**record, "environment": env, "commit": commit}
    summary = "\n".join(summary_line(name, envs[name]) for name in sorted(envs))
    message = summary + "\n\n" + json.dumps(doc, indent=1, sort_keys=True) + "\n"
    sig = signature or agent_signature()
    # Notes are rewritten by several agents at worst; last writer wins per
    # commit, and each writer merged what it read, so a lost race loses at
    # most the other environment's refresh of the same commit.
    repo.create_note(message, sig, sig, commit, NOTES_REF, True)


def mark_superseded(repo: pygit2.Repository, env: str, commits: Iterable[str], by: str, at: float) -> list[str]:
    """Record ``commits`` (skipped by coalescing) as superseded unless already noted."""
    marked = []
    for commit in commits:
        if env_record(repo, commit, env) is not None:
            continue
        write_note(repo, commit, env, {"result": "superseded", "superseded_by": by, "started": at, "finished": at, "hosts": []})
        marked.append(commit)
    return marked


def last_deployed(repo: pygit2.Repository, env: str, branch_ref: str, limit: int = 1000) -> str | None:
    """The newest commit on ``env``'s branch whose note says it was deployed there."""
    head = branch_head(repo, branch_ref)
    if head is None:
        return None
    for n, commit in enumerate(repo.walk(pygit2.Oid(hex=head), pygit2.enums.SortMode.TOPOLOGICAL)):
        record = env_record(repo, str(commit.id), env)
        if record and record.get("result") in RAN:
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
    check: str,
    host: str,
    signature: pygit2.Signature | None = None,
) -> str | None:
    """Commit onto ``branch_ref`` the environment's files as they were at ``base``.

    Only when the branch still points at ``failed`` (a newer push wins: it is
    reconciled next anyway).  Only ``env``'s paths change, so a repository
    holding several environments keeps the others' changes.  Returns the new
    commit id, or None when there is nothing to revert.
    """
    if branch_head(repo, branch_ref) != failed:
        return None
    failed_commit = repo[pygit2.Oid(hex=failed)]
    if base is None:
        if not failed_commit.parents:
            return None
        base = str(failed_commit.parents[0].id)
    base_commit = repo[pygit2.Oid(hex=base)]
    index = pygit2.Index()
    index.read_tree(failed_commit.tree)
    prefixes = environment_paths(env)
    for entry in list(index):
        if _under(entry.path, prefixes):
            index.remove(entry.path)
    base_index = pygit2.Index()
    base_index.read_tree(base_commit.tree)
    for entry in base_index:
        if _under(entry.path, prefixes):
            index.add(pygit2.IndexEntry(entry.path, entry.id, entry.mode))
    tree = index.write_tree(repo)
    if tree == failed_commit.tree.id:
        return None
    subject = failed_commit.message.splitlines()[0] if failed_commit.message else failed[:12]
    message = (
        f'Revert "{subject}" in {env}\n\n'
        f"The deploy of {failed[:12]} to {env} failed the {check} check on {host}\n"
        f"and was rolled back to {base[:12]}; this commit makes the branch say\n"
        f"what {env} runs again.\n\n"
        f"This reverts commit {failed}.\n"
    )
    sig = signature or agent_signature()
    try:
        new = repo.create_commit(branch_ref, sig, sig, message, tree, [failed_commit.id])
    except (pygit2.GitError, ValueError):
        return None  # the branch moved between our check and the update: a push won
    return str(new)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes)


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class HistoryEntry:
    commit: str
    subject: str
    author: str
    authored: float
    committer: str
    committed: float
    changed: tuple[str, ...]
    records: tuple[dict, ...]  # this commit's note records, filtered by env


def history(repo: pygit2.Repository, *, env: str | None = None, service: str | None = None, limit: int = 100) -> list[HistoryEntry]:
    """Commits of the environment branch(es), newest first, with their outcomes."""
    refs = sorted({environment_branch(repo, env)} if env else _all_branches(repo))
    seen: set[str] = set()
    entries: list[HistoryEntry] = []
    for ref in refs:
        head = branch_head(repo, ref)
        if head is None:
            continue
        for commit in repo.walk(pygit2.Oid(hex=head), pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.TIME):
            cid = str(commit.id)
            if cid in seen:
                continue
            seen.add(cid)
            changed = changed_paths(repo, commit)
            records = tuple(
                r for name, r in sorted(read_note(repo, cid).get("environments", {}).items()) if env is None or name == env
            )
            if env and not records and not any(_under(p, environment_paths(env)) for p in changed):
                continue
            if service and not _mentions_service(changed, records, service):
                continue
            entries.append(
                HistoryEntry(
                    commit=cid,
                    subject=(commit.message or "").splitlines()[0] if commit.message else "",
                    author=f"{commit.author.name} <{commit.author.email}>",
                    authored=float(commit.author.time),
                    committer=f"{commit.committer.name} <{commit.committer.email}>",
                    committed=float(commit.committer.time),
                    changed=changed,
                    records=records,
                )
            )
            if len(entries) >= limit:
                break
    entries.sort(key=lambda e: (e.committed, e.commit), reverse=True)
    return entries[:limit]


def _all_branches(repo: pygit2.Repository) -> set[str]:
    return {r for r in repo.references if r.startswith("refs/heads/")}


def _mentions_service(changed: tuple[str, ...], records: tuple[dict, ...], service: str) -> bool:
    if any(service in r.get("services_changed", []) for r in records):
        return True
    return any(p.endswith(f"/services/{service}.yaml") for p in changed)


def changed_paths(repo: pygit2.Repository, commit: pygit2.Commit) -> tuple[str, ...]:
    if commit.parents:
        diff = repo.diff(commit.parents[0], commit)
    else:
        diff = commit.tree.diff_to_tree(swap=True)
    return tuple(sorted({d.delta.new_file.path for d in diff} | {d.delta.old_file.path for d in diff}))


def running_at(repo: pygit2.Repository, env: str, at: float) -> dict | None:
    """The note record of what ``env`` ran at time ``at`` (the last deploy finished by then)."""
    best: dict | None = None
    for entry in history(repo, env=env, limit=10_000):
        for record in entry.records:
            if record.get("environment") != env or record.get("result") not in RAN:
                continue
            finished = record.get("finished") or 0
            if finished <= at and (best is None or finished > best.get("finished", 0)):
                best = record
    return best


def proven_image(repo: pygit2.Repository, env: str, service: str) -> tuple[str, dict] | None:
    """The image ``service`` ran healthy in ``env`` most recently, with its record."""
    best: dict | None = None
    for entry in history(repo, env=env, limit=10_000):
        for record in entry.records:
            if record.get("result") in RAN and service in record.get("digests", {}):
                if best is None or record.get("finished", 0) > best.get("finished", 0):
                    best = record
    if best is None:
        return None
    return best["digests"][service], best


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def parse_time(text: str) -> float:
    """An ISO 8601 time (Z or offset) or seconds since the epoch."""
    from datetime import datetime, timezone

    try:
        return float(text)
    except ValueError:
        pass
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def ensure_repo_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).resolve()
