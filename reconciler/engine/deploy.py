"""One deploy of a target (environment at a commit), through the engine.

For callers that hold a ``Target`` (the benchmarks, tests, scripts): the
same ``engine.run`` as ``reconciler apply`` and the agent, so the same lock,
journal and record in git.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from reconciler.core import report
from reconciler.core.plan import Plan
from reconciler.engine.executor import Outcome, Reporter
from reconciler.engine.target import Target


@dataclass
class DeployResult:
    plan: Plan | None
    outcome: Outcome | None  # None when nothing was applied (in sync, declined, refused)
    running: list[dict]
    unreachable: list[str] = field(default_factory=list)  # hosts not observed after the run
    result: object = None  # the engine's Result


def deploy_target(
    target: Target,
    *,
    report_progress: Reporter,
    confirm: Callable[[Plan], bool] = lambda plan: True,
    show_plan: Callable[[Plan], None] = lambda plan: None,
    timeout: float = 10.0,
    state_dir: Path | None = None,
    actor: str = "",
) -> DeployResult:
    from reconciler.adapters import fleet
    from reconciler.engine.recording import cli_actor
    from reconciler.engine.run import Context, Request, fleet_opener, run

    def ask(plan: Plan) -> bool:
        show_plan(plan)
        return confirm(plan)

    gitdir = Path(fleet_git_dir(target.repo))
    ctx = Context(repo=gitdir, state_dir=Path(state_dir) if state_dir else gitdir / "reconciler",
                  open_hosts=fleet_opener(target.identity_file, timeout),
                  close_hosts=fleet.close_hosts, observers=(report_progress,), confirm=ask)
    result = run(ctx, Request(target.environment.name, "deploy", commit=target.revision, trigger="cli",
                              actor=actor or cli_actor(), force=True))
    running = report.running_rows(result.desired or target.environment, result.observed) if result.observed is not None else []
    return DeployResult(result.plan, result.outcome, running, list(result.unreachable), result)


def fleet_git_dir(repo: Path) -> str:
    import pygit2

    return pygit2.discover_repository(str(repo))
