"""reconciler rollback: the emergency lever, back to a retained version on every host.

It runs through the engine like any deploy (lock, journal, a note in git),
and ends with a commit that sets the environment's files to the revision it
went back to, so the branch says what runs and the agent does not undo it.
"""

from __future__ import annotations

import os

from reconciler.cli.commands._common import add_target_arguments, finish, load_target


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--to", dest="to_revision", help="the commit to go back to (default: the version before the running one)")
    parser.add_argument("--yes", action="store_true", help="roll back without asking")
    parser.add_argument("--signing-key", default=os.environ.get("RECONCILER_SIGNING_KEY"),
                        help="SSH private key to sign the lever's commit (and its notes) with; needed under "
                             "policy.require_signed, its public key in the agent's allowed_signers (default: $RECONCILER_SIGNING_KEY)")


def run(args) -> int:
    from reconciler.cli.commands import _engine
    from reconciler.cli.commands.apply import progress_printer
    from reconciler.core import report
    from reconciler.engine.recording import cli_actor
    from reconciler.engine.run import Request, run as run_engine

    target = load_target(args)
    ctx = _engine.context(args, target, observers=(progress_printer(),), signing_key=args.signing_key,
                          confirm=_engine.asker(args, "rollback", "roll back these hosts?", lambda plan: print(report.plan_text(plan))))
    result = run_engine(ctx, Request(target.environment.name, "rollback", commit=target.revision, trigger="cli",
                                     actor=cli_actor(), to_revision=args.to_revision))
    code = finish(result, "rollback")
    if result.result == "declined":
        print("rollback: cancelled, nothing changed")
        return code
    if result.result == "in-sync":
        print("rollback: every host already runs that version")
        return code
    print(f"rollback: {result.result}")
    if result.message:
        print(f"failure: {result.message}")
    if result.observed is not None:
        print("now running:")
        print(report.running_text(report.running_rows(result.desired or target.environment, result.observed)))
    for host in result.unreachable:
        print(f"  {host:<8} UNREACHABLE: not observed after the rollback")
    if result.new_commit and result.new_commit != result.commit:
        print(f"committed {result.new_commit[:12]}: the branch now says what {target.environment.name} runs")
    elif result.result == "rolled-back" and not result.new_commit:
        print(f"{target.environment.name} is frozen: the hosts differ from the branch head; see `reconciler status`")
    return code
