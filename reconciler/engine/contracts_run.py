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

from reconciler.adapters import githistory
from reconciler.core.contracts import next_contract_in, plan_contract
from reconciler.core.plan import Plan
from reconciler.engine.state import RunState


def _wants_contracts(run: RunState) -> bool:
    env = run.environment
    return env.database is not None and any(s.migrations and s.migrations.allow_contract for s in env.services)


def _observe(run: RunState):
    from reconciler.engine.contract import observe_contracts

    env = run.environment
    since = {s.name: githistory.healthy_since(run.repo, run.env, s.name, str(s.image)) for s in env.services if s.migrations}
    return observe_contracts(env, run.hosts, since, run.ctx.clock())


def plan(run: RunState) -> Plan:
    return plan_contract(run.environment, _observe(run), run.commit)


def due(run: RunState) -> tuple[Plan | None, float | None]:
    """The contract plan to run now (None: nothing due), and the seconds until the next soak ends."""
    if not _wants_contracts(run):
        return None, None
    view = _observe(run)
    contract = plan_contract(run.environment, view, run.commit)
    for finding in contract.findings:
        run.log("contract-waiting", service=finding.service, detail=finding.detail)
    return (None if contract.in_sync else contract), next_contract_in(run.environment, view)
