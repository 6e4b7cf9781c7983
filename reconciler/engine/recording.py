"""The record step: what a run tells git, the status file and the journal.

Every run that did something, or was refused, ends here, and only here:
one ``record.Attempt`` appended to the note of its commit (after the run,
so ``deployed`` is written only once it succeeded), the status file
(Flux's lastAttempted/lastApplied/stalled), the journal closed, and, when a
deploy of the commit failed and ``policy.on_failure`` is ``revert``, a revert
commit so that the branch head says what runs again.

Which outcomes go to git: everything that changed a host; every refusal
(a refused commit stays ``refused``); an error before any change only once
per commit and reason, so a host down for an hour does not add a note per
retry; nothing for a run that found the hosts as the last applied commit
left them.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Iterable, Mapping

from reconciler.adapters import gitlog
from reconciler.adapters import githistory
from reconciler.adapters.locks import Locks
from reconciler.adapters.journal import (PHASE_FINISHED, PHASE_RECORDING, PHASE_ROLLING_BACK, Journal, JournalState,
                                         Status, TouchedRecord, read_status, write_status)
from reconciler.core import managed
from reconciler.core.record import Attempt, Serving
from reconciler.errors import InvalidDesiredState, ReconcilerError
from reconciler.engine.executor import Executor, Outcome
from reconciler.engine.state import Result, RunState

LOG_FIELDS = ("step", "host", "service", "error", "hosts", "reason")


def cli_actor() -> str:
    return f"{os.environ.get('SUDO_USER') or os.environ.get('USER') or os.getuid()}@{socket.gethostname()} (cli)"


# ---------------------------------------------------------------- observers of a run's steps


def journal_observer(journal: Journal):
    def observe(event: str, **fields: Any) -> None:
        if event == "touched":
            journal.set_touched([TouchedRecord(**r) for r in fields["records"]])
            return
        journal.record(event, **fields)
        if event == "rollback":
            journal.phase(PHASE_ROLLING_BACK, health=fields.get("health"))

    return observe


def serving_observer(sink: list[dict]):
    def observe(event: str, **fields: Any) -> None:
        if event == "serving":
            sink.append({k: fields.get(k) for k in ("at", "host", "service", "image", "container", "state", "revision")})

    return observe


def observers(run: RunState) -> tuple:
    def log(event: str, **fields: Any) -> None:
        if event not in ("touched",):
            run.log(f"step-{event}", **{k: v for k, v in fields.items() if k in LOG_FIELDS + ("image", "state")})

    return (journal_observer(run.journal), serving_observer(run.serving), log, *run.ctx.observers)


# ---------------------------------------------------------------- attempts


def final_serving(environment, observed: Mapping[str, Any] | None, at: float) -> list[Serving]:
    """What every host of the environment runs now, as observed."""
    out: list[Serving] = []
    for host, obs in sorted((observed or {}).items()):
        active = {c.service: c for c in obs.managed(environment.name) if c.role == managed.ROLE_ACTIVE}
        wanted = {s.name for s in environment.services if host in s.hosts} | set(active)
        for service in sorted(wanted):
            c = active.get(service)
            out.append(Serving(at, host, service, c.image if c is not None and c.running else None,
                               c.id if c else None, c.state if c else "absent", c.revision if c else None))
    return out


def attempt(run: RunState, result: str, reason: str, message: str = "", *, commit: str | None = None,
            environment=None, observed=None, outcome: Outcome | None = None, failed_check=None,
            revert: str | None = None, details: Mapping[str, Any] | None = None, operation: str | None = None,
            serving: Iterable[dict] | None = None, started: float | None = None, trigger: str | None = None,
            actor: str | None = None) -> Attempt:
    environment = environment or run.environment
    now = run.ctx.clock()
    steps = [Serving(**s) for s in (run.serving if serving is None else serving)]
    return Attempt(
        environment=run.env, commit=commit or run.commit, result=result, operation=operation or run.operation,
        reason=reason, message="\n".join(filter(None, (message, "" if revert else run.not_reverted))), trigger=run.request.trigger if trigger is None else trigger,
        actor=run.actor if actor is None else actor, run_id=run.journal.load().run_id if run.journal.load() else "",
        started=run.started if started is None else started, finished=now,
        hosts=tuple(sorted(h.name for h in environment.hosts)) if environment else (),
        digests=tuple(sorted((s.name, str(s.image)) for s in environment.services)) if environment else (),
        services_changed=tuple(sorted({c.service for c in run.plan.changes})) if run.plan else (),
        serving=tuple(steps) + tuple(final_serving(environment, observed, now) if environment else ()),
        evidence=tuple(outcome.evidence) if outcome else (),
        failed_check=tuple(failed_check) if failed_check else None,
        revert_commit=revert, signer=run.signer if (commit or run.commit) == run.commit else "",
        details=dict(details or {}),
    )


def write(run: RunState, item: Attempt) -> None:
    gitlog.append_attempt(run.repo, item, gitlog.agent_signature(run.ctx.agent_name, run.ctx.agent_email),
                          signing_key=run.ctx.signing_key)
    run.log("outcome", commit=item.commit, result=item.result, operation=item.operation, reason=item.reason,
            failure=item.message.splitlines()[0] if item.message else None)


def status(run: RunState, *, commit: str | None = None, result: str, applied: bool = False, stalled: bool = False,
           reason: str = "", message: str | None = None) -> None:
    commit = commit or run.commit
    previous = read_status(run.ctx.state_dir, run.env)
    run.status = Status(
        environment=run.env,
        last_attempted=commit,
        last_applied=commit if applied else previous.last_applied,
        stalled_commit=commit if stalled else None,
        result=result, reason=reason, message=message, at=run.ctx.clock(),
    )
    write_status(run.ctx.state_dir, run.status)


def _revert(run: RunState, commit: str, why: str, environment=None) -> str | None:
    environment = environment or run.environment
    if environment is None or environment.policy.on_failure != "revert":
        return None
    if environment.policy.require_signed and not run.ctx.signing_key:
        # An unsigned revert would be refused by the agent's own gate.
        run.not_reverted = ("not reverted: policy.require_signed, and the agent has no --signing-key to sign its revert "
                            "commit with; push a signed revert, or give the agent a key in allowed_signers")
        run.log("revert-skipped", reason=run.not_reverted)
        return None
    revert = gitlog.revert_failed(run.repo, env=run.env, branch_ref=run.branch, failed=commit, base=run.status.last_applied,
                                  why=why, signature=gitlog.agent_signature(run.ctx.agent_name, run.ctx.agent_email),
                                  signing_key=run.ctx.signing_key)
    if revert:
        run.log("reverted", revert=revert)
    return revert


# ---------------------------------------------------------------- how runs end


def supersede(run: RunState) -> tuple[str, ...]:
    since = run.status.last_attempted
    paths = gitlog.environment_paths(run.env)
    skipped = [c for c in gitlog.commits_between(run.repo, since, run.commit)
               if any(gitlog.under(p, paths) for p in githistory.changed_paths(run.repo, run.repo[c]))]
    marked = gitlog.mark_superseded(run.repo, run.env, skipped, run.commit, run.ctx.clock(), actor=run.actor,
                                    signature=gitlog.agent_signature(run.ctx.agent_name, run.ctx.agent_email),
                                    signing_key=run.ctx.signing_key)
    for c in marked:
        run.log("superseded", commit=c, by=run.commit)
    return tuple(marked)


def _new_outcome(run: RunState, result: str, reason: str) -> bool:
    """False when the commit's newest attempt already says this (a retry of the same error)."""
    last = gitlog.latest(run.repo, run.commit, run.env)
    return last is None or (last.result, last.reason, last.operation) != (result, reason, run.operation)


def invalid(run: RunState, exc: InvalidDesiredState) -> Result:
    if _new_outcome(run, "failed", "InvalidDesiredState"):
        write(run, attempt(run, "failed", "InvalidDesiredState", str(exc)))
    if run.operation == "deploy":
        status(run, result="failed", stalled=True, reason="InvalidDesiredState", message=str(exc))
    return run.result("failed", "stalled", "InvalidDesiredState", str(exc))


def not_started(run: RunState, exc: ReconcilerError, *, journaled: bool = False, database=None) -> Result:
    """The run stopped before any host changed: refused (stalled) or an error to retry."""
    reason = type(exc).__name__
    refused = exc.kind == "stalled"
    result = "refused" if refused else "error"
    revert = None
    if refused or _new_outcome(run, result, reason):
        if refused and run.operation == "deploy" and getattr(exc, "blames_commit", False):
            revert = _revert(run, run.commit, f"was refused before any host changed ({reason})")
        details = database_details(run, database)
        write(run, attempt(run, result, reason, str(exc), observed=run.observed or None, revert=revert, details=details))
    if run.operation == "deploy":
        status(run, result=result, stalled=refused, reason=reason, message=str(exc))
    if journaled and not run.carried:
        run.journal.phase(PHASE_FINISHED, result=result, failure=str(exc))
    return run.result(result, exc.kind, reason, str(exc), revert_commit=revert)


def in_sync(run: RunState, drifted: bool) -> Result:
    reason = "Drifted" if drifted else "ReconciliationSucceeded"
    if run.interrupted is not None and run.carried:
        run.journal.begin(run.commit, previous_commit=run.status.last_applied, operation=run.operation)
        run.journal.phase(PHASE_FINISHED, result="in-sync")
        if run.interrupted.commit == run.commit and run.interrupted.operation == "deploy":
            # A run that died after its last step: its deploy happened (and
            # passed its checks, or a Resume step would be planned).
            write(run, attempt(run, "deployed", reason, "finished after the agent restarted", observed=run.observed,
                               started=run.interrupted.started, trigger=run.interrupted.trigger,
                               actor=run.interrupted.actor or run.actor))
            status(run, result="deployed", applied=True, reason=reason)
            return run.result("deployed", None, reason, observed=run.observed)
    if run.commit != run.status.last_applied:
        # The hosts already run this commit's state (a revert commit, a
        # comment-only change): history says so, once.
        write(run, attempt(run, "in-sync", reason, observed=run.observed))
    status(run, result="in-sync", applied=True, reason=reason)
    return run.result("in-sync", None, reason, observed=run.observed)


def from_journal(run: RunState, state: JournalState, environment, observed) -> None:
    """Write the outcome a dead run had decided (or a finished recovery decided)."""
    result = state.result or "rolled-back"
    message = state.failure or ""
    if state.operation == "deploy":
        reason = ("HealthCheckFailed" if state.health else
                  "ReconciliationSucceeded" if result == "deployed" else "DeployInterrupted")
    elif result == "deployed":
        # The lever, a restore or a contract had finished its steps.
        result, reason = SUCCESS[state.operation], "ReconciliationSucceeded"
        if state.operation == "rollback":
            # Its commit (git saying what runs) was not made: freeze, so the
            # agent does not undo the rollback, and say why.
            why = (f"rolled back by {state.actor or 'the lever'}; the agent restarted before committing what runs: "
                   "commit the desired state the hosts run (or revert), then unlock")
            Locks(run.ctx.state_dir, clock=run.ctx.clock).freeze(run.env, why, by=state.actor or run.actor)
            message = why
    else:
        # A lever or restore whose own steps failed and were undone: it did not happen.
        result, reason = "failed", "HealthCheckFailed" if state.health else "Interrupted"
    revert = (_revert(run, state.commit, f"failed the {state.health[2]} check on {state.health[0]}", environment)
              if state.health and state.operation == "deploy" else None)
    item = attempt(run, result, reason, message, commit=state.commit, environment=environment, observed=observed,
                   failed_check=state.health, revert=revert, details=state.details, operation=state.operation,
                   serving=state.serving(), started=state.started, trigger=state.trigger, actor=state.actor or run.actor)
    write(run, item)
    if state.operation == "deploy":
        status(run, commit=state.commit, result=result, applied=result == "deployed", stalled=bool(state.health),
               reason=reason, message=state.failure)
    run.journal.phase(PHASE_FINISHED)


DATABASE_EVENTS = ("db-check", "db-backup", "db-migrate", "db-contract", "Backup", "Migrate", "RestoreDatabase")


def interrupted_before_containers(run: RunState, state: JournalState) -> None:
    """A dead run that changed no container may still have backed up or
    migrated the database: if so, git says so (no record says it did not happen)."""
    done = [r for r in state.records if r.get("event") == "done" and r.get("step") in DATABASE_EVENTS and r.get("reason")]
    if not done:
        return
    what = "; ".join(f"{r['step']}: {r['reason']}" for r in done)
    item = Attempt(environment=run.env, commit=state.commit, result="error", operation=state.operation, reason="Interrupted",
                   message=f"the agent stopped before any container changed, after: {what}", trigger=state.trigger,
                   actor=state.actor, run_id=state.run_id, started=state.started, finished=run.ctx.clock())
    write(run, item)


def database_details(run: RunState, database) -> dict:
    """The note's ``database`` details: what the phase did, and how long requests were held for it."""
    if database is None or not getattr(database, "result", None):
        return {}
    from reconciler.core.held import held

    doc = database.result.record()
    state = run.journal.load()
    seconds = held(run.plan.actions if run.plan else (), state.records if state else ())
    if seconds:
        doc["held"] = seconds
    return {"database": doc}


SUCCESS = {"deploy": "deployed", "rollback": "rolled-back", "restore": "restored", "contract": "contracted"}


def finished(run: RunState, executor: Executor, outcome: Outcome, *, database=None,
             rollback_failed: bool = False) -> Result:
    """The plan ran: record what happened."""
    from reconciler.adapters import fleet
    from reconciler.engine import lever

    health = executor.health_failure
    details = database_details(run, database)
    run.journal.phase(PHASE_RECORDING, result=outcome.result, failure=outcome.failure,
                      health=list(health) if health else None, details=details)
    unreachable: list[str] = []
    final = fleet.observe_all(run.hosts, unreachable=unreachable)
    name, kind, reason = verdict(run.operation, outcome, health, rollback_failed)
    commit, revert, new_commit = run.commit, None, None
    if run.operation == "rollback" and name == "rolled-back":
        # The lever changed the hosts: a commit makes git say what they run,
        # so the agent's next reconcile of the head does not undo it.
        new_commit = lever.make_git_say_what_runs(run)
        commit = new_commit or run.commit
    if health is not None and run.operation == "deploy":
        revert = _revert(run, run.commit, f"failed the {health[2]} check on {health[0]}")
    write(run, attempt(run, name, reason, outcome.failure or "", commit=commit, observed=final, outcome=outcome,
                       failed_check=health, revert=revert, details=details))
    if run.operation == "deploy":
        status(run, result=name, applied=name == "deployed", stalled=kind == "stalled", reason=reason,
               message=outcome.failure)
    elif new_commit is not None:
        status(run, commit=new_commit, result=name, applied=True, reason=reason)
    run.journal.phase(PHASE_FINISHED)
    return run.result(name, kind, reason, outcome.failure or "", revert_commit=revert, outcome=outcome, observed=final,
                      unreachable=tuple(unreachable), new_commit=new_commit)


def verdict(operation: str, outcome: Outcome, health, rollback_failed: bool = False) -> tuple[str, str | None, str]:
    """(result, kind, reason) of a run whose plan was executed."""
    if rollback_failed:
        return "failed", "stalled", "RollbackFailed"
    if outcome.result == "deployed":
        # A failed prune or heal after a good deploy is reported, not undone.
        return SUCCESS[operation], None, "MaintenanceFailed" if outcome.failure else "ReconciliationSucceeded"
    if health is not None:
        return ("rolled-back" if operation == "deploy" else "failed"), "stalled", "HealthCheckFailed"
    if outcome.result == "rolled-back":
        return ("rolled-back" if operation == "deploy" else "failed"), "transient", "DeployInterrupted"
    return "failed", "transient" if outcome.transient else "stalled", "MaintenanceFailed"
