"""What each operation plans, and what a run that finds nothing to do records.

deploy    ``plan_deploy`` (with Resume steps for a dead run's half-done work;
          a blue-green switch continues from what the hosts' routers show);
rollback  ``plan_rollback``: a retained container back on every host, refused
          whole when one host has none or when it is older than a contract;
restore   ``plan_restore``: a fresh verified backup, then the restore;
contract  the contract migrations whose soak is over (``core.contracts``).
"""

from __future__ import annotations

from typing import Any, Mapping

from reconciler.core.plan import Plan, plan_deploy, plan_restore, plan_rollback
from reconciler.core.plan_steps import DATABASE_STEPS, RestoreDatabase
from reconciler.engine import recovery
from reconciler.errors import RollbackRefused, StalledError
from reconciler.engine.state import Result, RunState


def observe(hosts: Mapping[str, Any]) -> dict:
    from reconciler.adapters import fleet

    return fleet.observe_all(hosts)


def observe_routers(run: RunState) -> None:
    """Add the routers of the hosts that serve exposed services to ``run.observed``."""
    from reconciler.engine import routing

    routers = run.ctx.executor_options.get("routers")
    if routers is None:
        routers = routing.RouterMap(run.environment, run.hosts)
    run.observed = routing.observe(run.environment, run.observed, routers)


def plan_for(run: RunState) -> Plan:
    if run.operation in ("deploy", "rollback") and run.environment.router is not None:
        observe_routers(run)  # a switch is planned from the router's state, like the containers'
    env, observed = run.environment, run.observed
    if run.operation == "deploy":
        interrupted = run.interrupted if run.carried else None
        run.seeds = recovery.carried_seeds(interrupted, observed)
        plan = recovery.with_resumes(plan_deploy(env, observed, run.commit), env, observed, interrupted)
        if interrupted is not None:  # a watch, a canary pause or a mirror the dead run began: what is left of it
            from reconciler.core.canary import resumed_watches
            from reconciler.core.canary_resume import resumed_pauses
            from reconciler.core.mirror_resume import resumed_mirrors

            records = interrupted.records
            plan = resumed_mirrors(resumed_pauses(resumed_watches(plan, env, observed, records), records), records)
        return plan
    if run.operation == "rollback":
        plan = plan_rollback(env, observed, run.request.to_revision)
        missing = [f for f in plan.findings if f.kind == "no-rollback-target"]
        if missing:
            raise RollbackRefused("rollback refused, no host changed: "
                                  + "; ".join(f"{f.host}/{f.service}: {f.detail}" for f in missing))
        if not plan.in_sync:
            from reconciler.engine.contract import refuse_rollback_past_contracts

            refuse_rollback_past_contracts(env, run.hosts, plan, observed)
        return plan
    if run.operation == "restore":
        from reconciler.engine import restore

        restore.check_backup(run, run.request.backup)  # before anything: a bad file must not replace good data
        return plan_restore(env, run.commit, run.request.backup)
    if run.operation == "contract":
        from reconciler.engine import contracts_run

        return contracts_run.plan(run)
    raise StalledError(f"unknown operation {run.operation!r}")


def database_steps(run: RunState, observers=()):
    """The object that runs the plan's database steps, or None when it has none."""
    if not any(isinstance(a, DATABASE_STEPS) for a in run.plan.actions):
        return None
    from reconciler.engine import dbphase
    from reconciler.engine import restore

    def report(event: str, **fields) -> None:
        for observer in observers:
            observer(event, **fields)

    steps = dbphase.DatabaseSteps(run.environment, run.hosts, run.commit, store_dir=run.ctx.backup_dir, report=report)
    if any(isinstance(a, RestoreDatabase) for a in run.plan.actions):
        return restore.WithRestore(steps, run)
    return steps


def in_sync(run: RunState) -> Result:
    """Nothing to change: say so, and give contracts their turn."""
    from reconciler.engine import recording

    if run.operation == "rollback":
        return run.result("in-sync", None, "AlreadyThere", "every host already runs that version")
    return recording.in_sync(run, drifted=bool(run.plan.findings))
