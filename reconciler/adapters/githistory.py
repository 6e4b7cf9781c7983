"""Git as the deployment log, read: each environment branch's commits with the
attempts their notes record, newest first (``reconciler history``), and
what the notes alone say ran where and when (``running_at``, the image a
service last ran healthy, since when).  pygit2 only; what a note says is
``reconciler.core.record``'s."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pygit2

from reconciler.adapters.gitlog import attempts, branch_head, environment_branch, environment_paths, under
from reconciler.core import record
from reconciler.core.record import Attempt, Serving


@dataclass(frozen=True)
class HistoryEntry:
    commit: str
    subject: str
    author: str
    authored: float
    committer: str
    committed: float
    changed: tuple[str, ...]
    attempts: tuple[Attempt, ...]  # this commit's attempts, filtered by env, oldest first


def history(repo: pygit2.Repository, *, env: str | None = None, service: str | None = None, limit: int = 100) -> list[HistoryEntry]:
    """Commits of the environment branch(es), newest first, with their attempts."""
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
            found = attempts(repo, cid, env)
            if env and not found and not any(under(p, environment_paths(env)) for p in changed):
                continue
            if service and not _mentions_service(changed, found, service):
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
                    attempts=found,
                )
            )
            if len(entries) >= limit:
                break
    entries.sort(key=lambda e: (e.committed, e.commit), reverse=True)
    return entries[:limit]


def _all_branches(repo: pygit2.Repository) -> set[str]:
    return {r for r in repo.references if r.startswith("refs/heads/")}


def _mentions_service(changed: tuple[str, ...], found: tuple[Attempt, ...], service: str) -> bool:
    if any(service in a.services_changed for a in found):
        return True
    return any(p.endswith(f"/services/{service}.yaml") for p in changed)


def changed_paths(repo: pygit2.Repository, commit: pygit2.Commit) -> tuple[str, ...]:
    if commit.parents:
        diff = repo.diff(commit.parents[0], commit)
    else:
        diff = commit.tree.diff_to_tree(swap=True)
    return tuple(sorted({d.delta.new_file.path for d in diff} | {d.delta.old_file.path for d in diff}))


def env_attempts(repo: pygit2.Repository, env: str) -> list[Attempt]:
    """Every attempt recorded for ``env`` on its branch, in no particular order."""
    return [a for entry in history(repo, env=env, limit=100_000) for a in entry.attempts]


def running_at(repo: pygit2.Repository, env: str, at: float) -> dict[tuple[str, str], Serving]:
    """(host, service) -> what ran there at ``at``, from the notes alone."""
    return record.running_at(env_attempts(repo, env), at, env)


def proven_image(repo: pygit2.Repository, env: str, service: str) -> tuple[str, Attempt] | None:
    """The image ``service`` ran healthy in ``env`` most recently, with its attempt."""
    ran = [a for a in env_attempts(repo, env) if a.ran and a.image_of(service)]
    best = max(ran, key=lambda a: a.finished, default=None)
    return (best.image_of(service), best) if best else None


def healthy_since(repo: pygit2.Repository, env: str, service: str, image: str) -> float | None:
    return record.healthy_since(env_attempts(repo, env), env, service, image)


iso = record.iso


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
