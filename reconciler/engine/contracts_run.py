"""Contracts through the engine: observed, planned, run and recorded like a deploy.

A reconcile that finds the environment in sync gives contract migrations
their turn (the release has been running; see ``core.contracts``).  A
contract that is due runs at once, as an engine run of its own operation
(``contract``) under the same lock: journaled, with a verified backup, and
recorded as ``contracted`` in git.  One that waits only for its soak asks
the agent to come back when the soak ends (``requeue_after``), not at the
next drift check.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from reconciler.adapters import gitlog
from reconciler.core.contracts import next_contract_in, plan_contract
from reconciler.core.plan import Plan

if TYPE_CHECKING:
    from reconciler.engine.run import Result, RunState


def _wants_contracts(run: "RunState") -> bool:
    env = run.environment
    return env.database is not None and any(s.migrations and s.migrations.allow_contract for s in env.services)


def _observe(run: "RunState"):
    from reconciler.engine.contract import observe_contracts

    env = run.environment
    since = {s.name: gitlog.healthy_since(run.repo, run.env, s.name, str(s.image)) for s in env.services if s.migrations}
    return observe_contracts(env, run.hosts, since, run.ctx.clock())


def plan(run: "RunState") -> Plan:
    return plan_contract(run.environment, _observe(run), run.commit)


def after_deploy(run: "RunState", result: "Result") -> "Result":
    """A release just deployed healthy: its contracts' soak starts now; ask to come back when it ends."""
    if result.result != "deployed" or not _wants_contracts(run):
        return result
    return dataclasses.replace(result, requeue_after=next_contract_in(run.environment, _observe(run)))


def after_in_sync(run: "RunState", result: "Result") -> "Result":
    if not _wants_contracts(run):
        return result
    from reconciler.engine.run import execute

    view = _observe(run)
    contract = plan_contract(run.environment, view, run.commit)
    for finding in contract.findings:
        run.log("contract-waiting", service=finding.service, detail=finding.detail)
    wait = next_contract_in(run.environment, view)
    if contract.in_sync:
        return dataclasses.replace(result, requeue_after=wait)
    run.operation, run.plan, run.serving = "contract", contract, []
    run.started = run.ctx.clock()
    return dataclasses.replace(execute(run), requeue_after=wait)
