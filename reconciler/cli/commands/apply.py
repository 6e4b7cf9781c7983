"""reconciler apply: make the hosts run what the commit says."""

from __future__ import annotations

import sys

from reconciler.core import report
from reconciler.cli.commands._common import add_target_arguments, is_tty, load_target
from reconciler.engine.deploy import deploy_target
from reconciler.errors import StalledError

HELP = "deploy a commit of the environment repository to its hosts, health-gated, rolling back on failure"

EXIT_ROLLED_BACK = 3


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--yes", action="store_true", help="apply without asking")


def progress_printer():
    """The run's live progress: a board on a terminal, plain lines otherwise."""
    from reconciler.cli.progress import for_terminal

    return for_terminal()


def run(args) -> int:
    target = load_target(args)

    def confirm(plan) -> bool:
        if args.yes:
            return True
        if not (is_tty() and sys.stdin.isatty()):
            raise StalledError("apply: not on a terminal; pass --yes to apply without asking")
        return input("apply these changes? [y/N] ").strip().lower() in ("y", "yes")

    result = deploy_target(
        target,
        report_progress=progress_printer(),
        confirm=confirm,
        show_plan=lambda plan: print(report.plan_text(plan)),
        timeout=args.timeout,
    )
    return print_result(target, result)


def print_result(target, result) -> int:
    """The closing summary: the outcome, the evidence of a failure, what runs where."""
    outcome = result.outcome
    if result.plan.in_sync:
        print("apply: nothing to change")
    elif outcome is None:
        print("apply: cancelled, nothing changed")
        return 1
    else:
        print(f"{target.environment.name} @ {target.revision[:12]}: {outcome.result} in {outcome.finished - outcome.started:.1f}s")
        if outcome.failure:
            print(f"failure: {outcome.failure}")
            for item in outcome.evidence:
                print("  " + item.replace("\n", "\n  "))
    print("now running:")
    print(report.running_text(result.running))
    for host in result.unreachable:
        print(f"  {host:<8} UNREACHABLE: not observed after the run; the next reconcile converges it")
    return EXIT_ROLLED_BACK if outcome is not None and outcome.result == "rolled-back" else 0
