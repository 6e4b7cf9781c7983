"""The CLI's way into the engine: the same lock, journal and record as the agent.

``apply``, ``rollback`` and ``db restore`` build a ``Request`` with the user
as actor and run it with ``engine.run``; the engine takes the environment's
lock (refusing while the agent runs one, or while it is frozen), journals
every step, and writes the attempt to git, exactly as for the agent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from reconciler.errors import StalledError


def state_dir_for(args: argparse.Namespace) -> Path:
    """The agent's state directory, found the way every command finds it."""
    from reconciler.cli.commands import _agent

    return Path(_agent.state_dir(argparse.Namespace(repo=args.repo, state=getattr(args, "state", None))))


def context(args, target, *, observers=(), confirm: Callable | None = None, signing_key: str | None = None):
    from reconciler.adapters import fleet
    from reconciler.cli.commands._agent import git_dir
    from reconciler.engine.run import Context, fleet_opener

    return Context(repo=git_dir(args.repo), state_dir=state_dir_for(args),
                   open_hosts=fleet_opener(target.identity_file, args.timeout),
                   close_hosts=fleet.close_hosts, observers=tuple(observers), confirm=confirm, signing_key=signing_key)


def asker(args, command: str, question: str, show: Callable | None = None) -> Callable:
    """The engine's confirm: show the plan, then ask (or --yes).  Without
    --yes and off a terminal the command is refused before the engine runs."""
    if not args.yes and not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise StalledError(f"{command}: not on a terminal; pass --yes to {command} without asking")

    def confirm(plan) -> bool:
        if show is not None:
            show(plan)
        return args.yes or input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    return confirm


def fail_on(result) -> None:
    """A run that was refused or could not start is an error for the CLI
    (frozen or locked: waiting, exit 4; the rest: exit 1)."""
    from reconciler.errors import WaitingError

    message = f"{result.environment}: {result.result} ({result.reason}): {result.message}"
    if result.result in ("frozen", "locked"):
        raise WaitingError(message)
    if result.result in ("refused", "error", "skipped") or (result.result == "failed" and result.outcome is None):
        raise StalledError(message)


# What apply and rollback say, where they differ: the command, and its in-sync line.
COMMANDS = {"deploy": ("apply", "nothing to change"), "rollback": ("rollback", "every host already runs that version")}


def run_command(args, operation: str, question: str, *, signing_key: str | None = None, **request) -> int:
    """``apply`` and ``rollback``: the plan shown and confirmed (or --yes),
    the engine run with the user as actor and its progress on the terminal,
    then the summary (``print_result``).  ``signing_key``: the lever's commit
    is signed with it (``rollback --signing-key``)."""
    from reconciler.cli.commands._common import finish, load_target
    from reconciler.cli.progress import for_terminal
    from reconciler.core import report
    from reconciler.engine.recording import cli_actor
    from reconciler.engine.run import Request, run

    command, _ = COMMANDS[operation]
    target = load_target(args)
    ctx = context(args, target, observers=(for_terminal(),), signing_key=signing_key,
                  confirm=asker(args, command, question, lambda plan: print(report.plan_text(plan))))
    result = run(ctx, Request(target.environment.name, operation, commit=target.revision, trigger="cli",
                              actor=cli_actor(), **request))
    code = finish(result, operation)
    print_result(target, result, operation)
    return code


def print_result(target, result, operation: str) -> None:
    """The closing summary of an apply or a rollback: the outcome, the
    evidence of a failure, what runs where, and what git now says."""
    from reconciler.core import report

    command, in_sync = COMMANDS[operation]
    env = target.environment.name
    if result.result == "declined":
        print(f"{command}: cancelled, nothing changed")
        return
    outcome = result.outcome
    if result.result == "in-sync":
        if result.plan is not None:
            print(report.plan_text(result.plan))
        print(f"{command}: {in_sync}")
    else:
        took = f" in {outcome.finished - outcome.started:.1f}s" if outcome is not None else ""
        print(f"{command}: {env} @ {target.revision[:12]}: {result.result}{took}")
        failure = outcome.failure if outcome is not None else result.message
        if failure:
            print(f"failure: {failure}")
            for item in outcome.evidence if outcome is not None else ():
                print("  " + item.replace("\n", "\n  "))
    if result.observed is not None:
        print("now running:")
        # Against the desired state the run acted on (host-file secrets' digests filled in).
        print(report.running_text(report.running_rows(result.desired or target.environment, result.observed)))
    for host in result.unreachable:
        print(f"  {host:<8} UNREACHABLE: not observed after the {command}; the next reconcile converges it")
    if result.result == "in-sync":
        return
    if result.revert_commit:
        print(f"reverted by {result.revert_commit[:12]}")
    if result.new_commit and result.new_commit != result.commit:
        print(f"committed {result.new_commit[:12]}: the branch now says what {env} runs")
    elif operation == "rollback" and result.result == "rolled-back":
        print(f"{env} is frozen: the hosts differ from the branch head; see `reconciler status`")
    print(f"recorded in git: note on {(result.new_commit or result.commit or '')[:12]}")
