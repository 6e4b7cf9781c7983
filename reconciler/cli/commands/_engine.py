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
    from reconciler.engine.run import Context

    def open_hosts(environment, known_hosts_file):
        return fleet.open_hosts(environment.hosts, identity_file=target.identity_file,
                                known_hosts_file=known_hosts_file, timeout=args.timeout)

    return Context(repo=git_dir(args.repo), state_dir=state_dir_for(args), open_hosts=open_hosts,
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
