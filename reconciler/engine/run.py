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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from reconciler.adapters import gitlog
from reconciler.adapters.journal import Journal, JournalState, TouchedRecord, read_status
from reconciler.adapters.locks import Locks
from reconciler.core.model import Environment
from reconciler.core.plan import Plan
from reconciler.engine import operations, recording, recovery
from reconciler.engine.executor import Executor, HostDriver, Outcome, Touched
from reconciler.errors import InvalidDesiredState, LockHeld, ReconcilerError, RollbackFailed

Log = Callable[..., None]
OpenHosts = Callable[[Environment, str], Mapping[str, HostDriver]]


def _quiet(event: str, **fields: Any) -> None:
    pass


@dataclass(frozen=True)
class Request:
    """What one run is asked to do."""

    environment: str
    operation: str = "deploy"  # deploy | rollback | restore | contract
    commit: str | None = None  # None: the environment branch's head
    trigger: str = "manual"  # push, drift, retry, start, cli, api ...
    actor: str = ""  # who asked; the agent's own runs say agent
    to_revision: str | None = None  # rollback: the revision to go back to
    backup: str | None = None  # restore: the backup to restore
    force: bool = False  # retry a commit that failed before


@dataclass(frozen=True)
class Context:
    """Everything a run needs from outside; tests swap the host side."""

    repo: Path
    state_dir: Path
    open_hosts: OpenHosts
    close_hosts: Callable[[Mapping[str, HostDriver]], None] = lambda hosts: None
    log: Log = _quiet
    clock: Callable[[], float] = time.time
    journal_hook: Callable[[str], None] | None = None
    agent_name: str | None = None
    agent_email: str | None = None
    executor_options: dict = field(default_factory=dict)  # clock/sleep for the health waits
    observers: tuple[Callable[..., None], ...] = ()  # extra watchers of the steps (the CLI's progress board)
    confirm: Callable[[Plan], bool] | None = None  # asked before anything changes; False declines
    backup_dir: Path | None = None
    trust: Any = None  # signatures.Trust: the keys commits may be signed with (default: from the environment)


@dataclass(frozen=True)
class Result:
    environment: str
    commit: str | None
    result: str  # an Attempt result, or skipped, frozen, locked, declined
    kind: str | None = None  # None when ready; else stalled, waiting, transient
    reason: str = "ReconciliationSucceeded"
    message: str = ""
    revert_commit: str | None = None
    superseded: tuple[str, ...] = ()
    drift_interval: float | None = None  # the environment's policy, for the agent's timer
    requeue_after: float | None = None  # run again then (a contract's soak ends)
    plan: Plan | None = None
    outcome: Outcome | None = None
    observed: Mapping[str, Any] | None = None  # the hosts after the run
    unreachable: tuple[str, ...] = ()  # hosts not observed after the run
    new_commit: str | None = None  # the commit a rollback made so that git says what runs


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


class RunState:
    """One run's state as the steps fill it in."""

    def __init__(self, ctx: Context, request: Request, repo, branch: str, commit: str) -> None:
        self.ctx, self.request, self.repo, self.branch, self.commit = ctx, request, repo, branch, commit
        self.env = request.environment
        self.operation = request.operation
        self.status = read_status(ctx.state_dir, self.env)
        self.journal = Journal(ctx.state_dir, self.env, clock=ctx.clock, hook=ctx.journal_hook)
        self.started = ctx.clock()
        self.interrupted: JournalState | None = None
        self.carried: tuple[TouchedRecord, ...] = ()
        self.environment: Environment | None = None
        self.pins: str | None = None
        self.hosts: Mapping[str, HostDriver] | None = None
        self.observed: dict = {}
        self.plan: Plan | None = None
        self.seeds: tuple[Touched, ...] = ()
        self.superseded: tuple[str, ...] = ()
        self.drift_interval: float | None = None
        self.serving: list[dict] = []
        self.actor = request.actor or recording.agent_actor()
        self.signer: str = ""

    def log(self, event: str, **fields: Any) -> None:
        self.ctx.log(event, environment=self.env, commit=fields.pop("commit", self.commit), **fields)

    def result(self, result: str, kind: str | None, reason: str, message: str = "", **more: Any) -> Result:
        return Result(self.env, self.commit, result, kind, reason, message, superseded=self.superseded,
                      plan=self.plan, **more)


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
    if (run.operation == "deploy" and run.commit == run.status.stalled_commit and not run.carried
            and not run.request.force):
        return run.result("skipped", "stalled", run.status.reason or "HealthCheckFailed",
                          f"{run.commit[:12]} failed before; waiting for a new commit")
    if run.operation == "deploy" and run.request.commit is None:
        run.superseded = recording.supersede(run)
    return None


def connect(run: RunState) -> Result | None:
    run.hosts = run.ctx.open_hosts(run.environment, run.pins)
    return None


def plan(run: RunState) -> Result | None:
    run.observed = operations.observe(run.hosts)
    run.plan = operations.plan_for(run)
    for finding in run.plan.findings:
        run.log("finding", host=finding.host, service=finding.service, kind=finding.kind, detail=finding.detail)
    if run.plan.in_sync:
        return operations.in_sync(run)
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
    if run.operation == "deploy":
        from reconciler.engine import contracts_run

        result = contracts_run.after_deploy(run, result)
    return result


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
