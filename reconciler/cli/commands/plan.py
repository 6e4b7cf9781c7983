"""reconciler plan: what apply would change, read-only (exit 0 in sync, 10 changes pending)."""

from __future__ import annotations

from reconciler.cli import exitcodes
from reconciler.cli.commands._common import add_target_arguments, load_target


def add_arguments(parser) -> None:
    add_target_arguments(parser, worktree=True)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from reconciler.core import report
    from reconciler.core.plan import plan_deploy
    from reconciler.engine import routing

    target = load_target(args)
    env = target.environment
    from reconciler.adapters import secret_files

    with target.connect(args.timeout) as hosts:
        env = secret_files.resolve(env, hosts)  # host-file secrets hashed as the agent hashes them
        observed = routing.observe_hosts(env, hosts)  # the containers, and the routers where services are exposed
    plan = plan_deploy(env, observed, target.revision)
    print(report.plan_json(plan) if args.json else report.plan_text(plan))
    return exitcodes.OK if plan.in_sync else exitcodes.CHANGES
