"""reconciler plan: what apply would change, read-only (exit 0 in sync, 10 changes pending).

The hosts' state comes from the running agent when it owns the same shape
of environment (``_observe``), else from this process over SSH.
"""

from __future__ import annotations

from reconciler.cli import exitcodes
from reconciler.cli.commands._agent import add_state_argument
from reconciler.cli.commands._common import add_target_arguments, load_target
from reconciler.cli.commands._observe import add_agent_argument


def add_arguments(parser) -> None:
    add_target_arguments(parser, worktree=True)
    add_state_argument(parser)
    add_agent_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from reconciler.cli.commands import _observe

    target = load_target(args)
    way = _observe.through_agent(args, target, routers=True, meanwhile=_planner)
    if isinstance(way, _observe.FromAgent):
        env, observed = way.environment, way.hosts
    else:
        env, observed = one_shot(args, target)
    _observe.say(way)
    from reconciler.core import report
    from reconciler.core.plan import plan_deploy

    plan = plan_deploy(env, observed, target.revision)
    if args.json:
        import json

        print(json.dumps({**json.loads(report.plan_json(plan)), "observed": way.json()}, indent=2, sort_keys=True))
    else:
        print(report.plan_text(plan))
    return exitcodes.OK if plan.in_sync else exitcodes.CHANGES


def _planner() -> None:
    """Loaded while the agent observes."""
    from reconciler.core import report  # noqa: F401
    from reconciler.core.plan import plan_deploy  # noqa: F401


def one_shot(args, target):
    """Each host opened and observed from here (its containers, and its router
    where services are exposed) on its own connection as soon as that is up,
    while the planner loads; the environment with its host-file secrets' digests."""
    from reconciler.engine import routing

    observe = target.environment
    with target.observing(lambda driver: routing.observe_host(observe, driver), args.timeout) as observations:
        from reconciler.adapters import secret_files
        from reconciler.core import report  # noqa: F401  (loaded while the hosts answer)
        from reconciler.core.plan import plan_deploy  # noqa: F401

        observed = observations.result()
        env = secret_files.resolve(target.environment, observations.hosts())  # hashed as the agent hashes them
    return env, observed
