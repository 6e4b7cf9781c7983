"""reconciler apply: make the hosts run what a commit says, through the engine."""

from __future__ import annotations

from reconciler.cli.commands._common import add_target_arguments, finish, load_target


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--yes", action="store_true", help="apply without asking")


def progress_printer():
    """The run's live progress: a board on a terminal, plain lines otherwise."""
    from reconciler.cli.progress import for_terminal

    return for_terminal()


def run(args) -> int:
    from reconciler.cli.commands import _engine
    from reconciler.core import report
    from reconciler.engine.recording import cli_actor
    from reconciler.engine.run import Request, run as run_engine

    target = load_target(args)
    ctx = _engine.context(args, target, observers=(progress_printer(),),
                          confirm=_engine.asker(args, "apply", "apply these changes?", lambda plan: print(report.plan_text(plan))))
    # A human asking for a commit retries it even if it failed before.
    result = run_engine(ctx, Request(target.environment.name, "deploy", commit=target.revision, trigger="cli",
                                     actor=cli_actor(), force=True))
    code = finish(result, "deploy")
    print_result(target, result)
    return code


def print_result(target, result) -> None:
    """The closing summary: the outcome, the evidence of a failure, what runs where."""
    from reconciler.core import report

    outcome = result.outcome
    if result.result == "in-sync":
        print(report.plan_text(result.plan) if result.plan is not None else "")
        print("apply: nothing to change")
    elif result.result == "declined":
        print("apply: cancelled, nothing changed")
        return
    else:
        print(f"{target.environment.name} @ {target.revision[:12]}: {result.result} in {outcome.finished - outcome.started:.1f}s")
        if outcome.failure:
            print(f"failure: {outcome.failure}")
            for item in outcome.evidence:
                print("  " + item.replace("\n", "\n  "))
        if result.revert_commit:
            print(f"reverted by {result.revert_commit[:12]}")
    if result.observed is not None:
        print("now running:")
        print(report.running_text(report.running_rows(result.desired or target.environment, result.observed)))
    for host in result.unreachable:
        print(f"  {host:<8} UNREACHABLE: not observed after the run; the next reconcile converges it")
    if result.result != "in-sync":
        print(f"recorded in git: note on {(result.new_commit or result.commit or '')[:12]}")
