"""After the rollback lever: make git say what the hosts run.

``reconciler rollback`` puts retained containers back in service.  Left at
that, the branch head would name a release that no longer runs, and the
agent's next reconcile of the head would undo the rollback.  So the lever
ends with a commit that sets the environment's files to those of the
revision it rolled back to (the containers carry it in a label); when the
restored containers do not come from one commit of this repository, the
environment is frozen instead, with a reason that says why and what to do.
"""

from __future__ import annotations

import pygit2

from reconciler.adapters import gitlog
from reconciler.adapters.locks import Locks
from reconciler.core.plan_steps import Restore
from reconciler.engine.state import RunState


def check_signing_key(run: RunState) -> None:
    """Under policy.require_signed the agent checks the lever's commit like
    any other: without a key it trusts, it would refuse that commit.  So the
    lever refuses first, before any host changes (SigningKeyRequired): with
    no signing key, or one the trust root on this machine does not have."""
    from reconciler.adapters import gitsign, signatures
    from reconciler.errors import BadSignature, SigningKeyRequired

    if not run.environment.policy.require_signed:
        return
    key = run.ctx.signing_key
    if not key:
        raise SigningKeyRequired(
            f"{run.env}: policy.require_signed, so the rollback lever needs a signing key: it ends with a commit that "
            "makes the branch say what runs, and the agent refuses an unsigned one; pass --signing-key (an SSH key "
            "whose public key is in the agent's allowed_signers) or set $RECONCILER_SIGNING_KEY")
    trust = run.ctx.trust or signatures.Trust.from_environment(run.repo)
    if trust.allowed_signers is None:
        return  # no trust root here to check the key against; the agent checks the commit
    payload = f"reconciler: rollback signing key check for {run.env}\n"
    signature = gitsign.sign(payload, key)
    try:
        signatures.verify_signature(signature.encode(), payload.encode(), int(run.ctx.clock()), trust,
                                    f"{run.env}: the rollback signing key {key}")
    except BadSignature as exc:
        raise SigningKeyRequired(f"{exc}; policy.require_signed, so the agent would refuse the lever's commit signed "
                                 "with it: use a key whose public key is in allowed_signers") from None


def restored_revisions(run: RunState) -> set[str]:
    revisions = set()
    for action in run.plan.actions:
        if isinstance(action, Restore):
            container = next((c for c in run.observed[action.host].containers if c.name == action.container), None)
            revisions.add((container.revision if container else None) or "")
    return revisions


def make_git_say_what_runs(run: RunState) -> str | None:
    """The commit that now describes the hosts (a new one, or the head when
    its files already say it); None when the environment had to be frozen."""
    revisions = restored_revisions(run)
    source = _commit(run.repo, next(iter(revisions))) if len(revisions) == 1 else None
    if source is None:
        why = (f"rolled back by {run.actor} to containers of {', '.join(sorted(r[:12] or '?' for r in revisions))}, "
               "which no single commit here describes; commit the desired state they run, then unlock")
        Locks(run.ctx.state_dir, clock=run.ctx.clock).freeze(run.env, why, by=run.actor)
        run.log("frozen", reason=why)
        return None
    head = gitlog.branch_head(run.repo, run.branch)
    hosts = ",".join(sorted({a.host for a in run.plan.actions}))
    message = (f"Roll back {run.env} to {source[:12]}\n\n"
               f"`reconciler rollback` by {run.actor} put the retained containers of\n"
               f"{source[:12]} back in service on {hosts}; this commit makes the branch\n"
               f"say what {run.env} runs.\n")
    new = gitlog.set_environment_to(run.repo, env=run.env, branch_ref=run.branch, head=run.commit, source=source,
                                    message=message, signature=gitlog.agent_signature(run.ctx.agent_name, run.ctx.agent_email),
                                    signing_key=run.ctx.signing_key)
    if new is not None:
        run.log("rollback-commit", new_commit=new, source=source)
        return new
    if head == run.commit:
        return run.commit  # the head's files already describe what runs
    why = f"rolled back by {run.actor} to {source[:12]} while the branch moved to {str(head)[:12]}; check, then unlock"
    Locks(run.ctx.state_dir, clock=run.ctx.clock).freeze(run.env, why, by=run.actor)
    run.log("frozen", reason=why)
    return None


def _commit(repo, revision: str) -> str | None:
    if not revision:
        return None
    try:
        return str(repo.revparse_single(revision).peel(pygit2.Commit).id)
    except (KeyError, ValueError, pygit2.GitError):
        return None
