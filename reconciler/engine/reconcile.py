"""One reconcile of one environment at one commit.

Level-based: whatever woke it, it re-reads the branch, the desired state at
the commit, and every host, then plans from scratch.  The shell
(``reconcile``) takes the lock and turns every error into a ``Result`` whose
``kind`` tells the agent what to do next (Flux's stalled/waiting/transient);
the work is a short list of steps:

1. recover: an interrupted run's journal is finished first (a rollback in
   progress is completed; a deploy in progress is carried into this run so
   that its touched containers stay rollback targets);
2. load the desired state at the commit (from git objects, no checkout);
3. open and observe the hosts; plan; add ``Resume`` steps for what the dead
   run left half-done (a container created but never started, a candidate
   that was never switched in, an active one never health-checked);
4. run the plan, journaling before and after every step;
5. record: note on the commit, revert commit after a health rollback
   (``policy.on_failure: revert``), status file, journal closed.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from reconciler.adapters import gitlog

from reconciler.core import model
from reconciler.engine.executor import Executor, HostDriver, Touched
from reconciler.errors import DeployFailed, InvalidDesiredState, LockHeld, ReconcilerError, RollbackFailed
from reconciler.adapters.journal import (
    PHASE_FINISHED,
    PHASE_RECORDING,
    PHASE_ROLLING_BACK,
    Journal,
    JournalState,
    Status,
    TouchedRecord,
    read_status,
    write_status,
)
from reconciler.adapters.locks import Locks
from reconciler.core.model import Environment, ObservedHost
from reconciler.core.plan import Action, CheckHealth, Plan, plan_deploy

Log = Callable[..., None]
OpenHosts = Callable[[Environment, str], Mapping[str, HostDriver]]
MAX_EVIDENCE = 4000


def _quiet(event: str, **fields: Any) -> None:
    pass


@dataclass(frozen=True)
class Context:
    """Everything a reconcile needs from outside; tests swap the host side."""

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


@dataclass(frozen=True)
class Result:
    environment: str
    commit: str | None
    result: str  # deployed, in-sync, rolled-back, failed, skipped, frozen, locked, error
    kind: str | None = None  # None when ready; else stalled, waiting, transient
    reason: str = "ReconciliationSucceeded"
    message: str = ""
    revert_commit: str | None = None
    superseded: tuple[str, ...] = ()
    drift_interval: float | None = None  # the environment's policy, for the agent's timer


@dataclass(frozen=True)
class Resume(CheckHealth):
    """Finish what an interrupted run left half-done on one host: rename the
    candidate in if there is no active container, start it, check health.
    A CheckHealth for the executor, so a failure rolls the deploy back."""

    container: str = ""  # id
    rename: bool = False


def fleet_opener(identity_file: str, timeout: float = 10.0) -> OpenHosts:
    from reconciler.adapters import fleet

    def open_(environment: Environment, known_hosts_file: str):
        return fleet.open_hosts(environment.hosts, identity_file=identity_file, known_hosts_file=known_hosts_file, timeout=timeout)

    return open_


# ---------------------------------------------------------------- the executor, journaled


class _JournaledTouched(Touched):
    """A Touched whose every change is journaled the moment it is made, so
    the id of a container is on disk before the step that affects it goes on."""

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        sink = self.__dict__.get("_sink")
        if sink is not None and name in ("previous", "new"):
            sink()


class JournaledExecutor(Executor):
    """The executor with a journal, carried-over touched containers, an
    idempotent rollback and the ``Resume`` step (see the report for the
    changes this asks of apply.Executor)."""

    def __init__(self, desired: Environment, hosts, revision: str, *, journal: Journal, seeds=(), **kwargs) -> None:
        super().__init__(desired, hosts, revision, **kwargs)
        self.journal = journal
        # Workers of different hosts add entries while another journals them.
        self._touched_lock = threading.RLock()
        self.health_failure: tuple[str, str, str] | None = None  # host, service, check
        for seed in seeds:
            touched = self._track(seed.host, seed.service)
            object.__setattr__(touched, "previous", seed.previous)
            object.__setattr__(touched, "new", seed.new)

    def _track(self, host: str, service: str) -> Touched:
        with self._touched_lock:
            touched = self.touched.get((host, service))
            if touched is None:
                touched = _JournaledTouched(host, service)
                object.__setattr__(touched, "_sink", self._journal_touched)
                self.touched[(host, service)] = touched
            return touched

    def _journal_touched(self) -> None:
        with self._touched_lock:
            records = [TouchedRecord(t.host, t.service, t.previous, t.new) for t in list(self.touched.values())]
        self.journal.set_touched(records)

    def _run(self, action: Action) -> None:
        try:
            if isinstance(action, Resume):
                self.report("begin", step=action.step, host=action.host, service=action.service, reason=action.reason)
                self._resume(action)
            else:
                super()._run(action)
        except DeployFailed as exc:
            if self.health_failure is None:
                self.health_failure = (exc.host or action.host, action.service, self._check_name(action.service))
            raise

    def _check_name(self, service: str) -> str:
        try:
            return self.desired.service(service).health.kind
        except KeyError:
            return "health"

    def _resume(self, action: Resume) -> None:
        driver = self.hosts[action.host]
        touched = self._track(action.host, action.service)
        touched.new = action.container
        if action.rename:
            driver.rename(action.container, model.container_name(self.desired.name, action.service))
        state = driver.inspect(action.container)
        if not state.running:
            driver.start(action.container)
        self.wait_healthy(driver, action.container, self.desired.service(action.service).health)

    def rollback(self) -> list[str]:
        # The failing check goes on disk with the phase: a restart that
        # finishes this rollback still knows to revert and not to retry.
        self.journal.phase(PHASE_ROLLING_BACK, health=list(self.health_failure) if self.health_failure else None)
        return super().rollback()


# ---------------------------------------------------------------- the shell


def reconcile(ctx: Context, env: str, *, commit: str | None = None, since: str | None = None, reason: str = "trigger") -> Result:
    """Reconcile ``env`` at ``commit`` (default: its branch head); never raises ReconcilerError."""
    try:
        repo = gitlog.open_repo(ctx.repo)
        branch = gitlog.environment_branch(repo, env)
        commit = commit or gitlog.branch_head(repo, branch)
    except ReconcilerError as exc:
        return Result(env, commit, "failed", exc.kind, "SourceUnavailable", str(exc))
    if commit is None:
        return Result(env, None, "failed", "stalled", "NoBranch", f"{env}: branch {branch} does not exist")
    locks = Locks(ctx.state_dir, clock=ctx.clock)
    try:
        with locks.held(env, commit):
            run = _Run(ctx, repo, env, branch, commit, since, reason)
            return dataclasses.replace(run.go(), drift_interval=run.drift_interval)
    except LockHeld as exc:
        frozen = locks.frozen(env) is not None
        return Result(env, commit, "frozen" if frozen else "locked", "waiting", "Frozen" if frozen else "LockHeld", str(exc))
    except RollbackFailed as exc:
        return Result(env, commit, "failed", "stalled", "RollbackFailed", str(exc))
    except ReconcilerError as exc:
        return Result(env, commit, "error", exc.kind, type(exc).__name__, str(exc))


class _Run:
    def __init__(self, ctx: Context, repo, env: str, branch: str, commit: str, since: str | None, reason: str) -> None:
        self.ctx, self.repo, self.env, self.branch, self.commit, self.reason = ctx, repo, env, branch, commit, reason
        self.status = read_status(ctx.state_dir, env)
        self.since = since or self.status.last_attempted
        self.journal = Journal(ctx.state_dir, env, clock=ctx.clock, hook=ctx.journal_hook)
        self.log = lambda event, **f: ctx.log(event, environment=env, commit=f.pop("commit", self.commit), **f)
        self.drift_interval: float | None = None

    # -------------------------------------------------------- steps
    def go(self) -> Result:
        interrupted = self.journal.unfinished()
        carried: tuple[TouchedRecord, ...] = ()
        if interrupted is not None:
            self.log("recover", phase=interrupted.phase, interrupted=interrupted.commit)
            if interrupted.phase == PHASE_ROLLING_BACK:
                self._finish_rollback(interrupted)
            elif interrupted.phase == PHASE_RECORDING:
                self.journal.adopt()
                self._record_from_journal(interrupted)
            else:
                carried = interrupted.touched
            self.status = read_status(self.ctx.state_dir, self.env)
            # The finished recovery may have moved the branch (a revert commit).
            self.commit = gitlog.branch_head(self.repo, self.branch) or self.commit

        if self.commit == self.status.stalled_commit and not carried and self.reason != "force":
            return Result(self.env, self.commit, "skipped", "stalled", self.status.reason or "HealthCheckFailed",
                          f"{self.commit[:12]} failed before; waiting for a new commit")
        try:
            environment, pins = self._load(self.commit)
        except InvalidDesiredState as exc:
            if interrupted is not None and carried:
                self._finish_rollback(interrupted)
            return self._invalid(exc)
        superseded = self._supersede()
        hosts = self.ctx.open_hosts(environment, pins)
        try:
            return self._deploy(environment, hosts, interrupted if carried else None, superseded)
        finally:
            self.ctx.close_hosts(hosts)

    def _load(self, commit: str) -> tuple[Environment, str]:
        from reconciler.core import schema
        from reconciler.adapters import source

        snapshot = source.snapshot_commit(self.ctx.repo, commit)
        if self.env not in schema.list_environments(snapshot):
            raise InvalidDesiredState([f"environments/{self.env}/environment.yaml:1:1: no environment {self.env!r} at {commit[:12]}"])
        environment = schema.load_environment(snapshot, self.env)
        self.drift_interval = environment.policy.drift_interval
        pins = snapshot.files.get(environment.known_hosts)
        if pins is None:
            raise InvalidDesiredState([f"{environment.known_hosts}:1:1: known_hosts file is missing; pin every host's key there"])
        path = Path(self.ctx.state_dir) / "known_hosts" / f"{self.env}-{commit[:12]}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pins)
            os.replace(tmp, path)
        return environment, str(path)

    def _supersede(self) -> tuple[str, ...]:
        skipped = [
            c for c in gitlog.commits_between(self.repo, self.since, self.commit)
            if any(gitlog._under(p, gitlog.environment_paths(self.env)) for p in gitlog.changed_paths(self.repo, self.repo[c]))
        ]
        marked = gitlog.mark_superseded(self.repo, self.env, skipped, self.commit, self.ctx.clock())
        for c in marked:
            self.log("superseded", commit=c, by=self.commit)
        return tuple(marked)

    def _deploy(self, environment: Environment, hosts, interrupted: JournalState | None, superseded) -> Result:
        observed = _observe(hosts)
        seeds = _seeds(interrupted, observed)
        plan = plan_deploy(environment, observed, self.commit)
        plan = _with_resumes(plan, environment, observed, interrupted)
        for finding in plan.findings:
            self.log("finding", host=finding.host, service=finding.service, kind=finding.kind, detail=finding.detail)
        if plan.in_sync:
            if interrupted is not None:
                self.journal.begin(self.commit, previous_commit=self.status.last_applied)
                self.journal.phase(PHASE_FINISHED, result="in-sync")
            result = self._in_sync(environment, observed, superseded, drifted=bool(plan.findings))
            self._contracts(environment, hosts)
            return result
        self.journal.begin(self.commit, previous_commit=self.status.last_applied, touched=seeds)
        self.log("deploy", actions=len(plan.actions), reason=self.reason)
        # Backup, verify and expand migrations run between pre-flight and the
        # first container change (no verified backup: no deploy).
        from reconciler.engine import dbphase

        phase = dbphase.DatabasePhase(environment, hosts, self.commit, report=self._reporter())
        executor = JournaledExecutor(environment, hosts, self.commit, journal=self.journal, seeds=seeds,
                                     report=self._reporter(), before_deploy=phase, **self.ctx.executor_options)
        try:
            outcome = executor.apply(plan)
        except RollbackFailed as exc:
            self.journal.phase(PHASE_RECORDING, result="failed", failure=str(exc))
            self._record(environment, "failed", started=self.ctx.clock(), failure=str(exc), changes=plan)
            raise
        except ReconcilerError as exc:
            # Nothing was changed (pre-flight); the journal keeps any carried ids.
            if not seeds:
                self.journal.phase(PHASE_FINISHED, result="error", failure=str(exc))
            return Result(self.env, self.commit, "error", exc.kind, type(exc).__name__, str(exc), superseded=superseded)
        result = outcome.result
        health = executor.health_failure
        self.journal.phase(PHASE_RECORDING, result=result, failure=outcome.failure,
                           health=list(health) if health else None)
        final = _observe(hosts)
        revert = self._record(environment, result, started=outcome.started, failure=outcome.failure,
                              evidence=outcome.evidence, health=health, observed=final, changes=plan,
                              transient=getattr(outcome, "transient", False),
                              database=phase.result.record() if phase.result else None)
        if result == "deployed":
            return Result(self.env, self.commit, "deployed", None, "ReconciliationSucceeded", outcome.failure or "", superseded=superseded)
        if health is not None:
            return Result(self.env, self.commit, "rolled-back", "stalled", "HealthCheckFailed", outcome.failure or "",
                          revert_commit=revert, superseded=superseded)
        if result == "rolled-back":
            return Result(self.env, self.commit, "rolled-back", "transient", "DeployInterrupted", outcome.failure or "", superseded=superseded)
        kind = "transient" if getattr(outcome, "transient", False) else "stalled"
        return Result(self.env, self.commit, result, kind, "MaintenanceFailed", outcome.failure or "", superseded=superseded)

    def _contracts(self, environment: Environment, hosts) -> None:
        """Contract migrations get their turn only in a reconcile that found
        the environment in sync: the release has been running and healthy."""
        if environment.database is None or not any(s.migrations and s.migrations.allow_contract for s in environment.services):
            return
        from reconciler.engine import contract

        record = gitlog.env_record(self.repo, self.commit, self.env)
        if not record or record.get("result") != "deployed" or "finished" not in record:
            return
        # The soak counts from when the running images started running, not
        # from this commit (which may only have set allow_contract).
        starts = [gitlog.healthy_since(self.repo, self.env, s.name, str(s.image)) for s in environment.services
                  if s.migrations and s.migrations.allow_contract]
        healthy_since = max((t for t in starts if t is not None), default=record["finished"])
        for outcome in contract.run_contracts(environment, hosts, self.commit, healthy_since=healthy_since,
                                              now=self.ctx.clock(), report=self._reporter()):
            self.log("contract", service=outcome.service, state=outcome.state)

    def _in_sync(self, environment: Environment, observed, superseded, drifted: bool) -> Result:
        if self.commit != self.status.last_applied:
            # The hosts already run this commit's state (a revert commit, a
            # comment-only change): it is deployed as far as history goes.
            now = self.ctx.clock()
            gitlog.write_note(self.repo, self.commit, self.env, self._base_record(environment, "deployed", now, observed), self._sig())
        self._status(result="in-sync", applied=True, reason="Drifted" if drifted else "ReconciliationSucceeded")
        return Result(self.env, self.commit, "in-sync", None, "Drifted" if drifted else "ReconciliationSucceeded", superseded=superseded)

    def _invalid(self, exc: InvalidDesiredState) -> Result:
        now = self.ctx.clock()
        if gitlog.env_record(self.repo, self.commit, self.env) is None:
            gitlog.write_note(self.repo, self.commit, self.env,
                              {"result": "failed", "started": now, "finished": now, "hosts": [], "failure": str(exc)}, self._sig())
        self._status(result="failed", stalled=True, reason="InvalidDesiredState", message=str(exc))
        return Result(self.env, self.commit, "failed", "stalled", "InvalidDesiredState", str(exc))

    # -------------------------------------------------------- recovery
    def _finish_rollback(self, interrupted: JournalState) -> None:
        """Complete a rollback a dead run began, with that run's desired state."""
        self.journal.adopt()
        environment, pins = self._load(interrupted.commit)
        hosts = self.ctx.open_hosts(environment, pins)
        try:
            seeds = _seeds(interrupted, _observe(hosts))
            executor = JournaledExecutor(environment, hosts, interrupted.commit, journal=self.journal, seeds=seeds,
                                         report=self._reporter(), **self.ctx.executor_options)
            try:
                executor.rollback()
            finally:
                executor.workers.shutdown(wait=True)
            self.journal.phase(PHASE_RECORDING, result="rolled-back", failure=interrupted.failure or "rollback finished after a restart")
            state = self.journal.load()
            self._record_from_journal(state, environment=environment, observed=_observe(hosts))
        finally:
            self.ctx.close_hosts(hosts)

    def _record_from_journal(self, state: JournalState, environment: Environment | None = None, observed=None) -> None:
        """Write the note and status a dead run had decided on but not written."""
        target, self.commit = self.commit, state.commit
        try:
            if environment is None:
                environment, _ = self._load(state.commit)
            self._record(environment, state.result or "rolled-back", started=state.started, failure=state.failure,
                         health=state.health, observed=observed)
        finally:
            self.commit = target

    # -------------------------------------------------------- recording
    def _reporter(self):
        def report(event: str, **fields: Any) -> None:
            self.journal.record(event, **fields)
            self.log(f"step-{event}", **{k: v for k, v in fields.items() if k in ("step", "host", "service", "error", "hosts")})

        return report

    def _sig(self):
        return gitlog.agent_signature(self.ctx.agent_name, self.ctx.agent_email)

    def _base_record(self, environment: Environment, result: str, started: float, observed=None) -> dict:
        record = {
            "result": result,
            "hosts": sorted(h.name for h in environment.hosts),
            "digests": {s.name: str(s.image) for s in environment.services},
            "started": started,
            "finished": self.ctx.clock(),
            "agent": f"{socket.gethostname()}:{os.getpid()}",
            "trigger": self.reason,
        }
        if observed:
            running = {}
            for host, obs in sorted(observed.items()):
                for c in obs.managed(environment.name):
                    if c.role == model.ROLE_ACTIVE:
                        running[f"{host}/{c.service}"] = {"image": c.image, "image_id": c.image_id, "state": c.state, "revision": c.revision}
            record["running"] = running
        return record

    def _record(self, environment, result, *, started, failure=None, evidence=(), health=None, observed=None, changes=None,
                transient: bool = False, database: dict | None = None) -> str | None:
        record = self._base_record(environment, result, started, observed)
        if database:
            record["database"] = database
        if changes is not None:
            record["services_changed"] = sorted({c.service for c in changes.changes})
        if failure:
            record["failure"] = failure
        if evidence:
            record["evidence"] = [e[-MAX_EVIDENCE:] for e in evidence]
        revert = None
        if health is not None:
            host, service, check = health
            record["failed_check"] = {"host": host, "service": service, "check": check}
            if environment.policy.on_failure == "revert":
                revert = gitlog.revert_failed(self.repo, env=self.env, branch_ref=self.branch, failed=self.commit,
                                              base=self.status.last_applied, check=f"{service} {check}", host=host, signature=self._sig())
                if revert:
                    record["revert_commit"] = revert
                    self.log("reverted", revert=revert)
        gitlog.write_note(self.repo, self.commit, self.env, record, self._sig())
        self.log("outcome", result=result, failure=(failure or "").splitlines()[0] if failure else None)
        stalled = health is not None or (result == "failed" and not transient)
        self._status(result=result, applied=result == "deployed", stalled=stalled,
                     reason={"deployed": "ReconciliationSucceeded"}.get(result, "HealthCheckFailed" if health else "DeployFailed"),
                     message=failure)
        self.journal.phase(PHASE_FINISHED)
        return revert

    def _status(self, *, result: str, applied: bool = False, stalled: bool = False, reason: str = "", message: str | None = None) -> None:
        previous = read_status(self.ctx.state_dir, self.env)
        status = Status(
            environment=self.env,
            last_attempted=self.commit,
            last_applied=self.commit if applied else previous.last_applied,
            stalled_commit=self.commit if stalled else None,
            result=result,
            reason=reason,
            message=message,
            at=self.ctx.clock(),
        )
        write_status(self.ctx.state_dir, status)
        self.status = status


# ---------------------------------------------------------------- pure helpers


def _observe(hosts: Mapping[str, HostDriver]) -> dict[str, ObservedHost]:
    return {name: driver.observe() for name, driver in hosts.items()}


def _same(a: str | None, b: str) -> bool:
    return bool(a) and (a.startswith(b) or b.startswith(a))


def _seeds(interrupted: JournalState | None, observed: Mapping[str, ObservedHost]) -> tuple[TouchedRecord, ...]:
    """The interrupted run's touched containers that still exist."""
    if interrupted is None:
        return ()
    out = []
    for t in interrupted.touched:
        host = observed.get(t.host)
        containers = host.containers if host else ()
        previous = next((c.id for c in containers if _same(t.previous, c.id)), None)
        new = next((c.id for c in containers if _same(t.new, c.id)), None)
        if previous or new:
            out.append(TouchedRecord(t.host, t.service, previous, new))
    return tuple(out)


def _with_resumes(plan: Plan, environment: Environment, observed: Mapping[str, ObservedHost], interrupted: JournalState | None) -> Plan:
    """Add Resume steps for (host, service) pairs a dead run left half-done."""
    if interrupted is None:
        return plan
    started = interrupted.steps_begun("Start") | {(t.host, t.service) for t in interrupted.touched}
    checked = interrupted.steps_done("CheckHealth") | interrupted.steps_done("Resume")
    resumes: list[Resume] = []
    for service in environment.services:
        want = model.config_hash(service)
        for host in service.hosts:
            if (host, service.name) not in started:
                continue
            mine = [c for c in observed.get(host, ObservedHost(host)).managed(environment.name) if c.service == service.name]
            active = next((c for c in mine if c.role == model.ROLE_ACTIVE), None)
            candidate = next((c for c in mine if c.role == model.ROLE_CANDIDATE), None)
            if active is not None and active.config_hash == want:
                if not active.running or (host, service.name) not in checked:
                    resumes.append(Resume(host, service.name, "finish the interrupted deploy: start and check", container=active.id))
            elif active is None and candidate is not None and candidate.config_hash == want:
                resumes.append(Resume(host, service.name, "finish the interrupted switch", container=candidate.id, rename=True))
    if not resumes:
        return plan
    resumed = {(r.host, r.service) for r in resumes}
    kept = [a for a in plan.actions if (a.host, a.service) not in resumed or a.step == "Prune"]
    pulls = [a for a in kept if a.step == "Pull"]
    rest = [a for a in kept if a.step != "Pull"]
    return dataclasses.replace(plan, actions=tuple(pulls + resumes + rest))
