"""Shared by the agent's commands: which repository, which state directory."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_repo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", default=os.environ.get("RECONCILER_REPO", "."), help="environment repository, bare or not (default: . or $RECONCILER_REPO)")
    parser.add_argument(
        "--state",
        default=os.environ.get("RECONCILER_STATE") or os.environ.get("STATE_DIRECTORY"),
        help="agent state: journal, locks, status (default: $RECONCILER_STATE, $STATE_DIRECTORY under systemd, else <git dir>/reconciler)",
    )


def git_dir(repo: str) -> Path:
    import pygit2

    found = pygit2.discover_repository(str(repo))
    if found is None:
        from reconciler.errors import StalledError

        raise StalledError(f"{repo}: not a git repository")
    return Path(found)


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state) if args.state else git_dir(args.repo) / "reconciler"
