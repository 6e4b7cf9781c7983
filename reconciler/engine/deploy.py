"""One deploy of a target (environment at a commit): open the hosts, plan, run.

Shared by ``reconciler apply`` and ``reconciler demo``; the agent adds the
lock, the journal and the note in git around the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from reconciler.engine import dbphase

from reconciler.adapters import fleet

from reconciler.core import report
from reconciler.engine.executor import Outcome, Reporter, run_plan
from reconciler.engine.target import Target
from reconciler.core.plan import Plan, plan_deploy


@dataclass
class DeployResult:
    plan: Plan
    outcome: Outcome | None  # None when nothing was applied (in sync, or declined)
    running: list[dict]
    unreachable: list[str] = field(default_factory=list)  # hosts not observed after the run


def deploy_target(
    target: Target,
    *,
    report_progress: Reporter,
    confirm: Callable[[Plan], bool] = lambda plan: True,
    show_plan: Callable[[Plan], None] = lambda plan: None,
    timeout: float = 10.0,
) -> DeployResult:
    env = target.environment
    with target.connect(timeout) as hosts:
        plan = plan_deploy(env, fleet.observe_all(hosts), target.revision)
        show_plan(plan)
        outcome = None
        if not plan.in_sync and confirm(plan):
            outcome = run_plan(env, hosts, plan, report=report_progress, before_deploy=dbphase.DatabasePhase(env, hosts, target.revision, report=report_progress))
        unreachable: list[str] = []
        running = report.running_rows(env, fleet.observe_all(hosts, unreachable=unreachable))
    return DeployResult(plan, outcome, running, unreachable)
