"""reconciler rollback: the emergency lever, back to a retained version on every host."""

from __future__ import annotations

import sys

from reconciler.adapters import fleet

from reconciler.core import report
from reconciler.engine.executor import run_plan
from reconciler.cli.commands._common import add_target_arguments, is_tty, load_target
from reconciler.cli.commands.apply import EXIT_ROLLED_BACK, progress_printer
from reconciler.errors import StalledError
from reconciler.core.plan import plan_rollback

HELP = "restore a retained previous version on all hosts (the git way is a revert commit)"


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--to", dest="to_revision", help="the commit to go back to (default: the version before the running one)")
    parser.add_argument("--yes", action="store_true", help="roll back without asking")


def run(args) -> int:
    target = load_target(args)
    env = target.environment
    with target.connect(args.timeout) as hosts:
        observed = fleet.observe_all(hosts)
        plan = plan_rollback(env, observed, args.to_revision)
        print(report.plan_text(plan))
        missing = [f for f in plan.findings if f.kind == "no-rollback-target"]
        if missing:
            raise StalledError(
                "rollback refused, no host changed: "
                + "; ".join(f"{f.host}/{f.service}: {f.detail}" for f in missing)
            )
        if plan.in_sync:
            print("rollback: every host already runs that version")
            return 0
        from reconciler.engine.contract import refuse_rollback_past_contracts

        refuse_rollback_past_contracts(env, hosts, plan, observed)
        if not args.yes:
            if not (is_tty() and sys.stdin.isatty()):
                raise StalledError("rollback: not on a terminal; pass --yes")
            if input("roll back these hosts? [y/N] ").strip().lower() not in ("y", "yes"):
                print("rollback: cancelled, nothing changed")
                return 1
        outcome = run_plan(env, hosts, plan, report=progress_printer())
        unreachable: list[str] = []
        rows = report.running_rows(env, fleet.observe_all(hosts, unreachable=unreachable))
    print(f"rollback: {outcome.result}")
    if outcome.failure:
        print(f"failure: {outcome.failure}")
    print("now running:")
    print(report.running_text(rows))
    for host in unreachable:
        print(f"  {host:<8} UNREACHABLE: not observed after the rollback")
    if outcome.result == "deployed":
        print(
            f"note: the hosts now differ from {target.revision[:12]}, which git says should run; "
            "commit a revert (`reconciler revert`) or freeze the environment (`reconciler lock`), "
            "or the agent will deploy that commit again"
        )
    return EXIT_ROLLED_BACK if outcome.result == "rolled-back" else 0
