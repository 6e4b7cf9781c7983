"""The data of one engine run: what is asked (Request), what it needs from
outside (Context), what it found and decided as the steps go (RunState), and
how it ended (Result).  The step modules share these; none of them imports
another step module in a circle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from reconciler.adapters.journal import Journal, JournalState, TouchedRecord, read_status
from reconciler.core.model import Environment
from reconciler.core.plan import Plan
from reconciler.engine.executor import HostDriver, Outcome, Touched

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
    signing_key: str | None = None  # the SSH key the agent signs its own commits (reverts, rollbacks) with


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
    desired: Environment | None = None  # the desired state the run acted on (host-file secrets' digests filled in)


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
        self.actor = request.actor or agent_actor()
        self.signer: str = ""
        self.not_reverted: str = ""  # why on_failure: revert made no commit (recorded in the attempt)
        self.requeue_after: float | None = None  # a contract waits for its soak

    def log(self, event: str, **fields: Any) -> None:
        self.ctx.log(event, environment=self.env, commit=fields.pop("commit", self.commit), **fields)

    def result(self, result: str, kind: str | None, reason: str, message: str = "", **more: Any) -> Result:
        return Result(self.env, self.commit, result, kind, reason, message, superseded=self.superseded,
                      plan=self.plan, desired=self.environment, **more)




def agent_actor() -> str:
    import os
    import socket

    return f"agent {socket.gethostname()}:{os.getpid()}"
