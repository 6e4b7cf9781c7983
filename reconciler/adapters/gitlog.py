"""Git as the deployment log: notes, revert commits, history.  pygit2 only.

Every engine run becomes an attempt appended to the note of its commit under
``refs/notes/reconciler``; what a note says (typed attempts, append-only,
several environments per commit) is ``reconciler.core.record``'s, and this
module only reads and writes it, walks history, and makes the agent's and the
promote/revert commits.

Which branch an environment follows: ``git config reconciler.<env>.branch``,
else a branch named like the environment, else the branch HEAD names.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pygit2

from reconciler.core import record
from reconciler.core.record import Attempt, Serving
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
        if _under(entry.path, prefixes):
            index.remove(entry.path)
    source_index = pygit2.Index()
    source_index.read_tree(source_commit.tree)
    for entry in source_index:
        if _under(entry.path, prefixes):
            index.add(pygit2.IndexEntry(entry.path, entry.id, entry.mode))
    tree = index.write_tree(repo)
    if tree == head_commit.tree.id:
        return None
    sig = signature or agent_signature()
    if signing_key:
        return _signed_commit(repo, branch_ref, sig, message, tree, head_commit.id, signing_key)
    try:
        new = repo.create_commit(branch_ref, sig, sig, message, tree, [head_commit.id])
    except (pygit2.GitError, ValueError):
        return None  # the branch moved between our check and the update: a push won
    return str(new)


def _signed_commit(repo: pygit2.Repository, branch_ref: str, sig: pygit2.Signature, message: str, tree,
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
            if env and not found and not any(_under(p, environment_paths(env)) for p in changed):
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


# ---------------------------------------------------------------- promote and revert, as ordinary commits


def set_scalar(text: str, keys: tuple[str, ...], value: str) -> str:
    """``text`` with the scalar at ``keys`` replaced by ``value``, nothing else touched.

    ruamel.yaml's round-trip parser finds the scalar (line and column, and
    whether it is quoted); the edit is then made in the text itself, so every
    comment, blank line and indentation choice survives byte for byte.
    """
    from ruamel.yaml import YAML

    # The round-trip loader builds plain mappings and scalars only (never
    # arbitrary objects); it is what gives each value its line and column.
    round_trip = YAML(typ="rt")
    node = round_trip.load(text)
    for key in keys[:-1]:
        node = node[key]
    last = keys[-1]
    if last not in node:
        raise StalledError(f"no {'.'.join(keys)} to edit")
    line_no, col = node.lc.value(last)
    lines = text.splitlines(keepends=True)
    line = lines[line_no]
    body = line.rstrip("\r\n")
    ending = line[len(body):]
    quote = body[col] if body[col] in "'\"" else ""
    if quote:
        end = body.index(quote, col + 1) + 1
    else:
        comment = body.find(" #", col)
        end = comment if comment >= 0 else len(body)
        end = len(body[:end].rstrip())
    lines[line_no] = body[:col] + f"{quote}{value}{quote}" + body[end:] + ending
    new = "".join(lines)
    check = round_trip.load(new)
    for key in keys:
        check = check[key]
    if str(check) != value:
        raise StalledError(f"editing {'.'.join(keys)} in place went wrong; edit by hand")
    return new


def service_file(repo: pygit2.Repository, commit: pygit2.Commit, env: str, service: str) -> tuple[str, tuple[str, ...]]:
    """Where ``service`` of ``env`` is written: (path, keys to its image)."""
    own = f"environments/{env}/services/{service}.yaml"
    if _blob_text(repo, commit, own) is not None:
        return own, ("image",)
    return f"environments/{env}/environment.yaml", ("services", service, "image")


def _blob_text(repo: pygit2.Repository, commit: pygit2.Commit, path: str) -> str | None:
    try:
        entry = commit.tree[path]
    except KeyError:
        return None
    return repo[entry.id].data.decode("utf-8")


def commit_files(repo: pygit2.Repository, branch_ref: str, changes: dict[str, str], message: str, signature: pygit2.Signature,
                 signing_key: str | None = None) -> str:
    """A commit on ``branch_ref`` replacing ``changes`` (path -> text), no checkout needed,
    signed with ``signing_key`` when given (``WaitingError`` if the branch moved meanwhile).

    In a working tree whose HEAD is that branch, the files and the index are
    updated too, and an uncommitted edit of the same file refuses the commit
    rather than being overwritten.
    """
    parent = repo.references[branch_ref].peel(pygit2.Commit)
    checked_out = not repo.is_bare and not repo.head_is_detached and repo.head.name == branch_ref
    if checked_out:
        for path in changes:
            status = repo.status_file(path)
            if status not in (pygit2.enums.FileStatus.CURRENT, 0):
                raise StalledError(f"{path} has uncommitted changes; commit or stash them first")
    index = pygit2.Index()
    index.read_tree(parent.tree)
    for path, text in changes.items():
        mode = parent.tree[path].filemode if path in parent.tree else pygit2.enums.FileMode.BLOB
        index.add(pygit2.IndexEntry(path, repo.create_blob(text.encode("utf-8")), mode))
    tree = index.write_tree(repo)
    if signing_key:
        signed = _signed_commit(repo, branch_ref, signature, message, tree, parent.id, signing_key)
        if signed is None:
            from reconciler.errors import WaitingError

            raise WaitingError(f"{branch_ref} moved while the commit was signed (a push won); run it again")
        new = pygit2.Oid(hex=signed)
    else:
        new = repo.create_commit(branch_ref, signature, signature, message, tree, [parent.id])
    if checked_out:
        for path, text in changes.items():
            Path(repo.workdir, path).write_text(text, encoding="utf-8")
            repo.index.add(path)
        repo.index.write()
    return str(new)


def promote(repo: pygit2.Repository, service: str, source: str, target: str, signature: pygit2.Signature | None = None) -> tuple[str, str]:
    """Commit to ``target``'s branch the image ``service`` runs healthy in ``source``.

    Returns (commit id, image).  The digest comes from the source's notes,
    so only what was deployed and passed its health checks can be promoted.
    """
    found = proven_image(repo, source, service)
    if found is None:
        raise StalledError(f"{service} has no healthy deploy recorded in {source}; nothing to promote")
    image, proof = found
    ref = environment_branch(repo, target)
    head = repo.references[ref].peel(pygit2.Commit)
    path, keys = service_file(repo, head, target, service)
    text = _blob_text(repo, head, path)
    if text is None:
        raise StalledError(f"{path} does not exist on {ref}")
    new_text = set_scalar(text, keys, image)
    if new_text == text:
        raise StalledError(f"{target} already runs {image} for {service}")
    name, _, digest = image.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2] or "untagged"
    message = (
        f"Promote {service} to {target}: {tag} ({digest[:19] or 'no digest'})\n\n"
        f"{image}\nproven healthy in {source} at {proof.commit} ({iso(proof.finished)}).\n"
    )
    return commit_files(repo, ref, {path: new_text}, message, signature or user_signature(repo)), image


def revert(repo: pygit2.Repository, commit: str, branch_ref: str, signature: pygit2.Signature | None = None) -> str:
    """An ordinary revert of ``commit`` on ``branch_ref`` (a three-way merge of
    the text, so the files keep every comment and their layout)."""
    target = repo.revparse_single(commit).peel(pygit2.Commit)
    head = repo.references[branch_ref].peel(pygit2.Commit)
    index = repo.revert_commit(target, head)
    if index.conflicts is not None:
        paths = sorted({(e[1] or e[2] or e[0]).path for e in index.conflicts})
        raise StalledError(f"reverting {str(target.id)[:12]} conflicts with later changes in: {', '.join(paths)}")
    changes = {}
    for entry in index:
        try:
            old = head.tree[entry.path].id
        except KeyError:
            old = None
        if old != entry.id:
            changes[entry.path] = repo[entry.id].data.decode("utf-8")
    removed = [p for p in _paths(head.tree) if p not in {e.path for e in index}]
    if removed:
        raise StalledError(f"reverting would delete {', '.join(removed)}; do that by hand")
    if not changes:
        raise StalledError(f"{str(target.id)[:12]} changes nothing on {branch_ref} any more")
    subject = (target.message or "").splitlines()[0] if target.message else ""
    message = f'Revert "{subject}"\n\nThis reverts commit {target.id}.\n'
    return commit_files(repo, branch_ref, changes, message, signature or user_signature(repo))


def _paths(tree: pygit2.Tree, prefix: str = "") -> list[str]:
    out = []
    for entry in tree:
        if entry.type_str == "tree":
            out.extend(_paths(entry, prefix + entry.name + "/"))
        else:
            out.append(prefix + entry.name)
    return out
