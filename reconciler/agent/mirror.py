"""Following an environment repository hosted elsewhere (pygit2 only).

The agent works on a local bare repository.  When the team's repository lives
on a hosting service, ``sync`` keeps the two in step, in both directions:

- fetch the remote's branches into ``refs/remotes/<remote>/*``;
- a local branch behind its remote branch is fast-forwarded to it (the ref
  watcher then sees it move, and the agent deploys);
- a local branch ahead of it (the agent's revert commits) is pushed, and so
  is the agent's notes ref, so the hosted repository tells the same story;
- diverged (someone pushed while the agent reverted): the remote wins, since
  it is where people merge; the dropped local commits are named in the log
  and their notes stay on the commits they describe.

A push the hosted side refuses (its pre-receive hook: say it requires signed
commits the agent's revert lacks, or refuses a rewrite of the notes) is not
an error of libgit2's: ``push`` returns, and only the per-reference status
says so.  That status is read (``push_update_reference``), the branch's
result says ``push-refused`` with the remote's words, and the log says it
each time (``mirror-push-refused``): never ``pushed`` for what the hosted
repository does not have.

Credentials: nothing for file paths and public https; for ssh remotes, an
identity file in ``$RECONCILER_GIT_IDENTITY`` (its ``.pub`` beside it).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import pygit2

NOTES_REF = "refs/notes/reconciler"
GIT_IDENTITY_ENV = "RECONCILER_GIT_IDENTITY"
MOVED = ("new", "fast-forward", "reset-to-remote")  # the sync actions that move a local branch


@dataclass(frozen=True)
class BranchSync:
    branch: str  # refs/heads/...
    action: str  # up-to-date, fast-forward, pushed, push-refused, reset-to-remote, new
    old: str | None
    new: str | None
    refused: str | None = None  # push-refused: what the remote said


class _Callbacks(pygit2.RemoteCallbacks):
    """Credentials from ``$RECONCILER_GIT_IDENTITY`` (ssh remotes), and the
    remote's answer per pushed reference (``refused``: ref -> its reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.key = os.environ.get(GIT_IDENTITY_ENV) or None
        self.refused: dict[str, str] = {}

    def credentials(self, url, username_from_url, allowed_types):
        if self.key is None:
            raise pygit2.Passthrough  # libgit2 goes on without (file paths, public https)
        return pygit2.Keypair(username_from_url or "git", self.key + ".pub", self.key, "")

    def push_update_reference(self, refname, message):
        if message:
            self.refused[refname.decode() if isinstance(refname, bytes) else refname] = str(message)


def sync(repo_path: str, remote_name: str, log: Callable[..., None] = lambda *a, **k: None) -> tuple[BranchSync, ...]:
    """Fetch ``remote_name`` and bring every branch it shares with us in step."""
    repo = pygit2.Repository(repo_path)
    remote = repo.remotes[remote_name]
    tracking = f"refs/remotes/{remote_name}/"
    remote.fetch([f"+refs/heads/*:{tracking}*"], callbacks=_Callbacks())
    results = []
    to_push: list[str] = []
    # refs/remotes/<remote>/HEAD names the remote's default branch; not a branch.
    for ref in [r for r in repo.references if r.startswith(tracking) and r != tracking + "HEAD"]:
        branch = "refs/heads/" + ref[len(tracking):]
        theirs = repo.references[ref].target
        local = repo.references.get(branch)
        if local is None:
            repo.references.create(branch, theirs)
            results.append(BranchSync(branch, "new", None, str(theirs)))
            continue
        ours = local.target
        if ours == theirs:
            results.append(BranchSync(branch, "up-to-date", str(ours), str(ours)))
        elif repo.descendant_of(theirs, ours):
            local.set_target(theirs, f"reconciler: fast-forward to {remote_name}")
            results.append(BranchSync(branch, "fast-forward", str(ours), str(theirs)))
        elif repo.descendant_of(ours, theirs):
            to_push.append(f"{branch}:{branch}")
            results.append(BranchSync(branch, "pushed", str(theirs), str(ours)))
        else:
            local.set_target(theirs, f"reconciler: {remote_name} diverged; the remote wins")
            log("mirror-diverged", branch=branch, dropped=str(ours), remote=str(theirs))
            results.append(BranchSync(branch, "reset-to-remote", str(ours), str(theirs)))
    if NOTES_REF in repo.references:
        # The agent is the only writer of its notes ref.
        to_push.append(f"+{NOTES_REF}:{NOTES_REF}")
    if to_push:
        answers = _Callbacks()
        remote.push(to_push, callbacks=answers)
        for ref, why in sorted(answers.refused.items()):
            log("mirror-push-refused", ref=ref, remote=remote_name, reason=why)
        results = [dataclasses.replace(r, action="push-refused", refused=answers.refused[r.branch])
                   if r.action == "pushed" and r.branch in answers.refused else r for r in results]
    for result in results:
        if result.action != "up-to-date":
            log("mirror-sync", branch=result.branch, action=result.action, old=result.old, new=result.new)
    return tuple(results)
