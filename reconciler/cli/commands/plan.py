"""reconciler plan: what apply would change, read-only."""

from __future__ import annotations

from reconciler.adapters import fleet

from reconciler.core import report
from reconciler.cli.commands._common import add_target_arguments, load_target
from reconciler.core.plan import plan_deploy

HELP = "show what apply would change on the hosts (exit 0 in sync, 2 changes pending, 1 error)"

EXIT_IN_SYNC = 0
EXIT_CHANGES = 2


def add_arguments(parser) -> None:
    add_target_arguments(parser, worktree=True)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    target = load_target(args)
    env = target.environment
    with target.connect(args.timeout) as hosts:
        observed = fleet.observe_all(hosts)
    plan = plan_deploy(env, observed, target.revision)
    print(report.plan_json(plan) if args.json else report.plan_text(plan))
    return EXIT_IN_SYNC if plan.in_sync else EXIT_CHANGES
