"""The engine: the one way any change reaches an environment's hosts.

The agent (a push, the drift timer, a retry), ``reconciler apply``,
``rollback`` and ``db restore``, and a contract whose soak is over all call
``run(ctx, Request(...))``.  Every run, whatever asked for it, goes through
the same steps (Flux's controller shape: a thin shell around small steps with
one signature, ``step(run) -> Result | None``, where a Result ends the run)::

    lock     the environment's run lock; a freeze refuses every run
    recover  an interrupted run's journal is finished or carried into this one
    load     the desired state at the commit, from git objects (no checkout)
    gate     a commit that failed before is not retried; skipped commits are noted superseded
    connect  every host, with the commit's pinned keys (all or none)
    plan     observe the hosts, plan the operation (deploy, rollback, restore, contract)
    confirm  the caller may look at the plan and decline (the CLI asks)
    execute  the plan, step by step, journaled before and after every step
    record   an attempt appended to the commit's note, the status, a revert commit

Level-based: whatever woke it, a run re-reads git and the hosts.  ``run``
never raises a ReconcilerError: it returns a ``Result`` whose ``kind`` says
what the caller does next (None ready; stalled, waiting, transient).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from reconciler.adapters import gitlog
from reconciler.adapters.journal import read_status
from reconciler.adapters.locks import Locks
from reconciler.core.model import Environment
from reconciler.engine import contracts_run, lever, operations, recording, recovery
from reconciler.engine.executor import Executor, Outcome
from reconciler.engine.state import Context, OpenHosts, Request, Result, RunState
from reconciler.errors import InvalidDesiredState, LockHeld, ReconcilerError, RollbackFailed

__all__ = ["Context", "Request", "Result", "RunState", "fleet_opener", "reconcile", "run"]

def run(ctx: Context, request: Request) -> Result:
    """Run ``request`` under the environment's lock; never raises ReconcilerError."""
    env = request.environment
    try:
        repo = gitlog.open_repo(ctx.repo)
        branch = gitlog.environment_branch(repo, env)
        commit = request.commit or gitlog.branch_head(repo, branch)
    except ReconcilerError as exc:
        return Result(env, request.commit, "error", exc.kind, "SourceUnavailable", str(exc))
    if commit is None:
        return Result(env, None, "failed", "stalled", "NoBranch", f"{env}: branch {branch} does not exist")
    locks = Locks(ctx.state_dir, clock=ctx.clock)
    try:
        with locks.held(env, commit):
            state = RunState(ctx, request, repo, branch, commit)
            try:
                for step in STEPS:
                    try:
                        result = step(state)
                    except ReconcilerError as exc:  # a step that stopped before changing anything
                        result = recording.not_started(state, exc)
                    if result is not None:
                        return dataclasses.replace(result, drift_interval=state.drift_interval)
                raise AssertionError("the execute step always ends a run")
            finally:
                if state.hosts is not None:
                    ctx.close_hosts(state.hosts)
    except LockHeld as exc:
        frozen = locks.frozen(env) is not None
        return Result(env, commit, "frozen" if frozen else "locked", "waiting", "Frozen" if frozen else "LockHeld", str(exc))


# ---------------------------------------------------------------- the steps


def recover(run: RunState) -> Result | None:
    """Finish what a dead run left: a rollback in progress is completed, a
    decided outcome is written; a deploy in progress is carried into this run
    so that the containers it touched stay rollback targets."""
    run.interrupted = run.journal.unfinished()
    if run.interrupted is None:
        return None
    run.log("recover", phase=run.interrupted.phase, interrupted=run.interrupted.commit)
    run.carried = recovery.finish_interrupted(run, run.interrupted)
    run.status = read_status(run.ctx.state_dir, run.env)
    freeze = Locks(run.ctx.state_dir).frozen(run.env)
    if freeze is not None:  # the recovery froze it (a lever that could not commit what runs)
        return run.result("frozen", "waiting", "Frozen", f"{run.env} is frozen by {freeze.by}: {freeze.reason}")
    if run.request.commit is None:
        # The finished recovery may have moved the branch (a revert commit).
        run.commit = gitlog.branch_head(run.repo, run.branch) or run.commit
    return None


def load(run: RunState) -> Result | None:
    try:
        run.environment, run.pins = recovery.load_desired(run, run.commit)
    except InvalidDesiredState as exc:
        if run.carried:
            recovery.roll_back_carried(run)
        return recording.invalid(run, exc)
    run.drift_interval = run.environment.policy.drift_interval
    return None


def gate(run: RunState) -> Result | None:
    if run.operation == "deploy":
        # A commit whose signature policy.require_signed wants and does not
        # verify is refused, whoever asks (UnsignedCommit, BadSignature).
        run.signer = recovery.verified_signer(run)
    if run.operation == "rollback":
        # Its commit must be signed by a key the agent trusts (SigningKeyRequired).
        lever.check_signing_key(run)
    if (run.operation == "deploy" and run.commit == run.status.stalled_commit and not run.carried
            and not run.request.force):
        return run.result("skipped", "stalled", run.status.reason or "HealthCheckFailed",
                          f"{run.commit[:12]} failed before; waiting for a new commit")
    if run.operation == "deploy" and run.request.commit is None:
        run.superseded = recording.supersede(run)
    return None


def connect(run: RunState) -> Result | None:
    from reconciler.adapters import secret_files

    run.hosts = run.ctx.open_hosts(run.environment, run.pins)
    # Host-file secrets get their keyed digest from the hosts' files: a
    # rotated file changes the config hash, and the service redeploys.
    run.environment = secret_files.resolve(run.environment, run.hosts)
    return None


def plan(run: RunState) -> Result | None:
    run.observed = operations.observe(run.hosts)
    run.plan = operations.plan_for(run)
    for finding in run.plan.findings:
        run.log("finding", host=finding.host, service=finding.service, kind=finding.kind, detail=finding.detail)
    if not run.plan.in_sync:
        return None
    result = operations.in_sync(run)
    if run.operation != "deploy":
        return result
    # In sync: contract migrations get their turn (the release has been
    # running).  One that is due runs now, as this run's own operation.
    contract, wait = contracts_run.due(run)
    if contract is None:
        return dataclasses.replace(result, requeue_after=wait)
    run.operation, run.plan, run.serving, run.started = "contract", contract, [], run.ctx.clock()
    run.requeue_after = wait
    return None


def confirm(run: RunState) -> Result | None:
    if run.ctx.confirm is not None and not run.ctx.confirm(run.plan):
        return run.result("declined", None, "Declined", "nothing changed")
    return None


def execute(run: RunState) -> Result | None:
    run.journal.begin(run.commit, previous_commit=run.status.last_applied, touched=run.carried,
                      operation=run.operation, trigger=run.request.trigger, actor=run.actor)
    run.log("deploy" if run.operation == "deploy" else run.operation, actions=len(run.plan.actions), reason=run.request.trigger)
    observers = recording.observers(run)
    database = operations.database_steps(run, observers)
    executor = Executor(run.environment, run.hosts, run.commit, observers=observers,
                        database=database, seeds=run.seeds, **run.ctx.executor_options)
    try:
        outcome = executor.apply(run.plan)
    except RollbackFailed as exc:
        return recording.finished(run, executor, Outcome(run.env, run.commit, "failed", failure=str(exc), started=run.started),
                                  database=database, rollback_failed=True)
    except ReconcilerError as exc:
        # Raised only while nothing was changed (pre-flight, the database
        # phase): a refusal or a transient error, not a deploy.
        return recording.not_started(run, exc, journaled=True, database=database)
    finally:
        if database is not None:
            database.close()
    result = recording.finished(run, executor, outcome, database=database)
    if run.operation == "deploy" and result.result == "deployed":
        # The release's contracts start their soak now: come back when it ends.
        result = dataclasses.replace(result, requeue_after=contracts_run.due(run)[1])
    return dataclasses.replace(result, requeue_after=result.requeue_after or run.requeue_after)


STEPS: tuple[Callable[[RunState], Result | None], ...] = (recover, load, gate, connect, plan, confirm, execute)


def fleet_opener(identity_file: str, timeout: float = 10.0) -> OpenHosts:
    """Open an environment's hosts with ``identity_file`` (a fresh connection each run)."""
    from reconciler.adapters import fleet

    def open_(environment: Environment, known_hosts_file: str):
        return fleet.open_hosts(environment.hosts, identity_file=identity_file, known_hosts_file=known_hosts_file, timeout=timeout)

    return open_


def reconcile(ctx: Context, env: str, *, commit: str | None = None, reason: str = "trigger", force: bool = False,
              actor: str = "") -> Result:
    """The agent's run: deploy the branch head (or ``commit``)."""
    return run(ctx, Request(env, "deploy", commit=commit, trigger=reason, actor=actor, force=force or reason == "force"))
