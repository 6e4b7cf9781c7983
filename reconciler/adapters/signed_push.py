"""The pre-receive hook's signature rule: which pushed commits must be signed.

A ref update needs signatures when an environment that will follow the ref
(``reconciler.<env>.branch``, else the branch named after it, else HEAD's
branch) requires them, by its policy in the pushed commit or by its policy at
the commit it follows now: turning ``require_signed`` off takes a signed
commit, and so does moving an environment to a new branch that says nothing.

Then every commit the update adds to the ref must verify, not only the tip:
the commits reachable from the new tip and not from the old one.  Commits
already on another branch are checked too (pushing an unsigned commit to a
side branch first is no way around the rule).  A new branch is checked from
its tip down to the commits some branch already has, and its tip always.
"""

from __future__ import annotations

import os

import pygit2

from reconciler.adapters import source
from reconciler.adapters.signatures import Trust, verify_commit
from reconciler.core import schema
from reconciler.core.model import Policy
from reconciler.errors import BadSignature, ReconcilerError, UnsignedCommit

_ZERO = "0" * 40
# A push of a long history into a protected branch is checked in full; past
# this many commits it is refused, so one push cannot keep the hook busy for
# minutes (a ssh-keygen or gpgv run per commit).
MAX_COMMITS = 1000


class _Snapshots:
    """Snapshots by commit, each read once per push."""

    def __init__(self, repo_path: str | os.PathLike[str]) -> None:
        self.repo_path = repo_path
        self._cache: dict[str, schema.Snapshot] = {}

    def at(self, commit: str) -> schema.Snapshot:
        if commit not in self._cache:
            self._cache[commit] = source.snapshot_commit(self.repo_path, commit)
        return self._cache[commit]

    def policy(self, commit: str | None, env: str) -> Policy:
        return Policy() if commit is None else schema.policy_of(self.at(commit), env)


def policy_at(repo_path: str | os.PathLike[str], commit: str | None, env: str) -> Policy:
    """``env``'s policy at ``commit`` as far as it can be read (the model's
    defaults for None): the agent's ``previous`` for verify_commit, from the
    commit it last applied."""
    return _Snapshots(repo_path).policy(commit, env)


def _branch_after(repo: pygit2.Repository, env: str, ref: str) -> bool:
    """Whether ``env`` follows ``ref`` once ``ref`` exists (the rule of
    gitlog.environment_branch, with the pushed ref counted as present)."""
    try:
        configured = repo.config[f"reconciler.{env}.branch"]
    except KeyError:
        configured = None
    if configured:
        return (configured if configured.startswith("refs/") else f"refs/heads/{configured}") == ref
    own = f"refs/heads/{env}"
    if ref == own:
        return True
    if own in repo.references:
        return False
    head = repo.references.get("HEAD")
    return head is not None and head.type == pygit2.enums.ReferenceType.SYMBOLIC and head.target == ref


def _current_commit(repo: pygit2.Repository, env: str) -> str | None:
    """The commit ``env`` follows before this push, if any."""
    from reconciler.adapters import gitlog

    try:
        return gitlog.branch_head(repo, gitlog.environment_branch(repo, env))
    except ReconcilerError:
        return None  # HEAD names no branch: the environment follows nothing yet


def protected_by(repo_path: str | os.PathLike[str], ref: str, old: str | None, new: str) -> list[str]:
    """The environments whose policy makes this update need signed commits:
    those at the new commit and those the update removes (deleting an
    environment is a change to it too)."""
    repo = source.open_repository(repo_path)
    snapshots = _Snapshots(repo_path)
    found = []
    candidates = set(schema.list_environments(snapshots.at(new)))
    if old is not None:
        candidates |= set(schema.list_environments(snapshots.at(old)))
    for env in sorted(candidates):
        if not _branch_after(repo, env, ref):
            continue
        if snapshots.policy(new, env).require_signed or snapshots.policy(_current_commit(repo, env), env).require_signed:
            found.append(env)
    return found


def added_commits(repo: pygit2.Repository, old: str | None, new: str) -> list[str]:
    """The commits the update adds to the ref, newest first, at most MAX_COMMITS + 1."""
    walker = repo.walk(pygit2.Oid(hex=new), pygit2.enums.SortMode.TOPOLOGICAL)
    if old is not None:
        walker.hide(pygit2.Oid(hex=old))
    else:
        for name in repo.references:
            if name.startswith("refs/heads/"):
                walker.hide(repo.references[name].resolve().target)
    out = [new]
    for commit in walker:
        if str(commit.id) != new:
            out.append(str(commit.id))
        if len(out) > MAX_COMMITS:
            break
    return out


def check(repo_path: str | os.PathLike[str], ref: str, old: str, new: str, trust: Trust | None = None) -> list[str]:
    """Why the update of ``ref`` from ``old`` to ``new`` is refused (one line
    each), or an empty list.  Deletions and non-branch refs are not this
    rule's business."""
    if not ref.startswith("refs/heads/") or new == _ZERO:
        return []
    previous = None if old == _ZERO else old
    envs = protected_by(repo_path, ref, previous, new)
    if not envs:
        return []
    repo = source.open_repository(repo_path)
    trust = trust or Trust.from_environment(repo)
    commits = added_commits(repo, previous, new)
    if len(commits) > MAX_COMMITS:
        return [f"{ref}: the push adds more than {MAX_COMMITS} commits to a branch whose commits must be signed; push it in parts"]
    required = Policy(require_signed=True)
    refusals = []
    for commit in commits:
        try:
            verify_commit(repo, commit, required, trust, environment=", ".join(envs))
        except (UnsignedCommit, BadSignature) as exc:
            refusals.append(str(exc))
    return refusals
