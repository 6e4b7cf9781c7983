"""reconciler plan: what apply would change, read-only (exit 0 in sync, 10 changes pending)."""

from __future__ import annotations

from reconciler.cli import exitcodes
from reconciler.cli.commands._common import add_target_arguments, load_target


def add_arguments(parser) -> None:
    add_target_arguments(parser, worktree=True)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from reconciler.engine import routing

    target = load_target(args)
    env = target.environment
    # Each host is observed (its containers, and its router where services are
    # exposed) on its own connection as soon as that is up, while the planner loads.
    observe = target.environment
    with target.observing(lambda driver: routing.observe_host(observe, driver), args.timeout) as observations:
        from reconciler.adapters import secret_files
        from reconciler.core import report
        from reconciler.core.plan import plan_deploy

        observed = observations.result()
        env = secret_files.resolve(env, observations.hosts())  # host-file secrets hashed as the agent hashes them
    plan = plan_deploy(env, observed, target.revision)
    print(report.plan_json(plan) if args.json else report.plan_text(plan))
    return exitcodes.OK if plan.in_sync else exitcodes.CHANGES
