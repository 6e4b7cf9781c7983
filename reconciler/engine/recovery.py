"""Recovery: what a run does with the journal of a run that died.

The journal's phase says how far the dead run got:

- ``rolling-back``: its rollback is completed with *its* desired state, and
  its outcome recorded, before anything else happens;
- ``recording``: its outcome was decided but not written: it is written;
- ``deploying``: the containers it touched are carried into this run (they
  stay rollback targets), and ``resumes`` adds steps that finish what it left
  half-done (a container created but never started, a candidate never
  switched in, an active one never health-checked).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Mapping

from reconciler.adapters.journal import PHASE_FINISHED, PHASE_RECORDING, PHASE_ROLLING_BACK, JournalState, TouchedRecord
from reconciler.core import managed
from reconciler.core.model import Environment
from reconciler.core.managed import ObservedHost
from reconciler.core.plan import Plan
from reconciler.core.plan_steps import Resume
from reconciler.engine.executor import Executor, Touched
from reconciler.errors import InvalidDesiredState
from reconciler.engine.state import RunState


def load_desired(run: RunState, commit: str) -> tuple[Environment, str]:
    """The environment at ``commit`` and its pinned keys, written where paramiko reads them."""
    from reconciler.adapters import source
    from reconciler.core import schema

    snapshot = source.snapshot_commit(run.ctx.repo, commit)
    if run.env not in schema.list_environments(snapshot):
        raise InvalidDesiredState([f"environments/{run.env}/environment.yaml:1:1: no environment {run.env!r} at {commit[:12]}"])
    from reconciler.adapters import secrets

    # Encrypted secrets get their keyed digest: the config hash follows the
    # value, and an undecryptable one stops the run before any host is touched.
    environment = secrets.resolve(schema.load_environment(snapshot, run.env))
    pins = snapshot.files.get(environment.known_hosts)
    if pins is None:
        raise InvalidDesiredState([f"{environment.known_hosts}:1:1: known_hosts file is missing; pin every host's key there"])
    path = Path(run.ctx.state_dir) / "known_hosts" / f"{run.env}-{commit[:12]}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pins)
        os.replace(tmp, path)
    return environment, str(path)


def verified_signer(run: RunState) -> str:
    """Who signed the commit (verified), or ""; raises when policy requires a
    signature that is missing or does not verify.  Turning the requirement
    off takes a signed commit too: the last applied commit's policy counts."""
    from reconciler.adapters import signatures

    previous = None
    if not run.environment.policy.require_signed and run.status.last_applied not in (None, run.commit):
        previous = _policy_at(str(run.ctx.repo), run.status.last_applied, run.env)
    trust = run.ctx.trust or signatures.Trust.from_environment(run.repo)
    signer = signatures.verify_commit(run.repo, run.commit, run.environment.policy, trust,
                                      previous=previous, environment=run.env)
    return str(signer) if signer else ""


@functools.lru_cache(maxsize=64)
def _policy_at(repo: str, commit: str, env: str):
    """The environment's policy at ``commit`` as far as it can be read, even
    when that commit does not validate (commits do not change: cached)."""
    from reconciler.adapters.signed_push import policy_at

    return policy_at(repo, commit, env)


def finish_interrupted(run: RunState, interrupted: JournalState) -> tuple[TouchedRecord, ...]:
    """Complete or carry the dead run; returns the touched records carried into this one."""
    from reconciler.engine import recording

    if interrupted.phase == PHASE_ROLLING_BACK:
        _finish_rollback(run, interrupted)
        return ()
    if interrupted.phase == PHASE_RECORDING:
        run.journal.adopt()
        environment, _ = load_desired(run, interrupted.commit)
        recording.from_journal(run, run.journal.load(), environment, observed=None)
        return ()
    if interrupted.operation != "deploy" and interrupted.touched:
        # A lever or restore that died half-way: undone, and recorded as not done.
        _finish_rollback(run, interrupted)
        return ()
    if not interrupted.touched:
        # It died before changing any container: nothing to carry or undo;
        # but what it did to the database is said in git.
        from reconciler.engine import recording

        run.journal.adopt()
        recording.interrupted_before_containers(run, interrupted)
        run.journal.phase(PHASE_FINISHED, result="error", failure="interrupted before any container changed")
        return ()
    run.serving.extend(interrupted.serving())  # what it served stays in the timeline
    return interrupted.touched


def roll_back_carried(run: RunState) -> None:
    """The new commit does not load, but the dead run changed hosts: put them back."""
    if run.interrupted is not None:
        _finish_rollback(run, run.interrupted)
        run.carried = ()


def _finish_rollback(run: RunState, interrupted: JournalState) -> None:
    from reconciler.engine import recording

    run.journal.adopt()
    environment, pins = load_desired(run, interrupted.commit)
    hosts = run.ctx.open_hosts(environment, pins)
    try:
        seeds = carried_seeds(interrupted, _observe(hosts))
        serving: list[dict] = list(interrupted.serving())
        observers = (recording.journal_observer(run.journal), recording.serving_observer(serving))
        executor = Executor(environment, hosts, interrupted.commit, observers=observers, seeds=seeds, **run.ctx.executor_options)
        run.journal.phase(PHASE_ROLLING_BACK, health=list(interrupted.health) if interrupted.health else None)
        try:
            executor.rollback()
        finally:
            executor.workers.shutdown(wait=True)
        run.journal.phase(PHASE_RECORDING, result="rolled-back",
                          failure=interrupted.failure or "rollback finished after a restart")
        recording.from_journal(run, run.journal.load(), environment, observed=_observe(hosts))
    finally:
        run.ctx.close_hosts(hosts)


def _observe(hosts) -> dict[str, ObservedHost]:
    return {name: driver.observe() for name, driver in hosts.items()}


def _same(a: str | None, b: str) -> bool:
    return bool(a) and (a.startswith(b) or b.startswith(a))


def carried_seeds(interrupted: JournalState | None, observed: Mapping[str, ObservedHost]) -> tuple[Touched, ...]:
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
            out.append(Touched(t.host, t.service, previous, new, t.new_was if new else None))
    return tuple(out)


def with_resumes(plan: Plan, environment: Environment, observed: Mapping[str, ObservedHost], interrupted: JournalState | None) -> Plan:
    """``plan`` with Resume steps for the (host, service) pairs a dead run left half-done."""
    if interrupted is None:
        return plan
    started = interrupted.steps_begun("Start") | {(t.host, t.service) for t in interrupted.touched}
    # A switch through the router counts as checked: the router saw it UP before moving the weights.
    checked = interrupted.steps_done("CheckHealth") | interrupted.steps_done("Resume") | interrupted.steps_done("SetWeights")
    resumes: list[Resume] = []
    for service in environment.services:
        want = managed.config_hash(service)
        for host in service.hosts:
            if (host, service.name) not in started:
                continue
            mine = [c for c in observed.get(host, ObservedHost(host)).managed(environment.name) if c.service == service.name]
            active = next((c for c in mine if c.role == managed.ROLE_ACTIVE), None)
            candidate = next((c for c in mine if c.role == managed.ROLE_CANDIDATE), None)
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
