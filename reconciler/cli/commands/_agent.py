"""Shared by the agent's commands: which repository, which state directory.

One resolver (``resolve_state``) decides where the agent's journal, locks
and status live, for the agent and for every command that reads or writes
them (``lock``, ``unlock``, ``status``, ``run``, and the engine's commands),
in this order:

1. ``--state DIR``;
2. ``$RECONCILER_STATE``;
3. ``state_dir`` in the settings file (``reconciler.cli.config``): the one
   file the agent and every shell on the machine read alike;
4. ``$STATE_DIRECTORY``, which systemd sets for the unit (StateDirectory=);
5. the agent's pointer, ``<git dir>/reconciler-state``: a small JSON file the
   agent writes at start naming its state directory, so that a shell with
   none of the unit's environment still finds it;
6. ``<git dir>/reconciler``.

Without step 5 the shipped unit's agent read /var/lib/reconciler while
``reconciler lock`` from a shell wrote ``<git dir>/reconciler``: a freeze
that froze nothing (issue 10, item 7).  The settings file comes before the
unit's variable because a shell sees the file too: both sides then agree
even before the agent has written its pointer.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

POINTER = "reconciler-state"
DEFAULT = "reconciler"


def add_state_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        default=None,
        help="agent state: journal, locks, status (default: $RECONCILER_STATE, state_dir in the settings file, "
             f"$STATE_DIRECTORY under systemd, the directory the agent recorded in <git dir>/{POINTER}, "
             f"else <git dir>/{DEFAULT})",
    )


def add_repo_arguments(parser: argparse.ArgumentParser) -> None:
    from reconciler.cli.commands._common import add_repo_argument

    add_repo_argument(parser)
    add_state_argument(parser)


def git_dir(repo: str) -> Path:
    import pygit2

    found = pygit2.discover_repository(str(repo))
    if found is None:
        from reconciler.errors import StalledError

        raise StalledError(f"{repo}: not a git repository")
    return Path(found)


@dataclass(frozen=True)
class StateLocation:
    path: Path
    source: str  # how it was chosen, shown by lock/status so nobody has to guess

    def describe(self) -> str:
        return f"{self.path} ({self.source})"


def pointer_path(gdir: Path) -> Path:
    return Path(gdir) / POINTER


def read_pointer(gdir: Path) -> dict | None:
    """The agent's pointer document, or None when no agent has recorded one."""
    from reconciler.adapters.journal import read_json

    doc = read_json(pointer_path(gdir))
    return doc if isinstance(doc, dict) and isinstance(doc.get("state_dir"), str) else None


def resolve_state(gdir: Path, *, explicit: str | None = None, environ: Mapping[str, str] = os.environ,
                  settings=None) -> StateLocation:
    """Where the agent's state is, by the one rule every command follows
    (module docstring).  ``settings`` defaults to the settings file that
    ``environ`` selects (``reconciler.cli.config.load``)."""
    if explicit:
        return StateLocation(Path(explicit).absolute(), "--state")
    if environ.get("RECONCILER_STATE"):
        return StateLocation(Path(environ["RECONCILER_STATE"]).absolute(), "$RECONCILER_STATE")
    if settings is None:
        from reconciler.cli import config

        settings = config.load(environ)
    if settings.state_dir is not None:
        return StateLocation(Path(settings.state_dir).absolute(), settings.where("state_dir"))
    if environ.get("STATE_DIRECTORY"):
        # systemd may list several directories, colon-separated; ours is the first.
        return StateLocation(Path(environ["STATE_DIRECTORY"].split(":")[0]).absolute(), "$STATE_DIRECTORY")
    pointer = read_pointer(gdir)
    if pointer is not None:
        path = Path(pointer["state_dir"])
        if not path.is_dir():
            from reconciler.errors import StalledError

            raise StalledError(f"{pointer_path(gdir)}: names the agent's state directory {path}, which does not exist; "
                               f"pass --state DIR, or remove the file if that agent is gone for good")
        return StateLocation(path, f"recorded by the agent in {pointer_path(gdir)}")
    return StateLocation(Path(gdir) / DEFAULT, "default: no agent has recorded another")


def publish_state(gdir: Path, location: StateLocation) -> None:
    """Record ``location`` in the git dir for shells (step 4), and make its
    locks directory one that the pushers' group may freeze in.

    Called by the agent at start.  Written atomically and readable by all:
    the reader is another user (a pusher in the reconciler group).
    """
    from reconciler.adapters.locks import prepare_locks_dir, write_shared_json

    prepare_locks_dir(location.path)
    write_shared_json(pointer_path(gdir), {
        "state_dir": str(location.path),
        "source": location.source,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "written": time.time(),
    })


def state_location(args: argparse.Namespace) -> StateLocation:
    location = resolve_state(git_dir(args.repo), explicit=getattr(args, "state", None))
    if location.source == "$STATE_DIRECTORY":
        # Only a process of the service sees $STATE_DIRECTORY (systemd sets it
        # for the unit alone), so this is the agent under the shipped unit:
        # record where it keeps its state.  An agent started by hand with
        # --state should call publish_state itself (reconciler run).
        publish_state(git_dir(args.repo), location)
    return location


def state_dir(args: argparse.Namespace) -> Path:
    return state_location(args).path
