"""The options of the commands that act on an environment: which
repository, environment, commit and SSH identity (see reconciler.engine.target)."""

from __future__ import annotations

import argparse
import os
import sys

from reconciler.engine.target import load_target  # noqa: F401  (the commands import it from here)


def add_target_arguments(parser: argparse.ArgumentParser, *, worktree: bool = False) -> None:
    parser.add_argument("--repo", default=os.environ.get("RECONCILER_REPO", "."), help="environment repository (default: . or $RECONCILER_REPO)")
    parser.add_argument("--env", help="environment name (optional when the repository has only one)")
    parser.add_argument("--rev", "--commit", dest="rev", default="HEAD", help="commit to use (default: HEAD)")
    if worktree:
        parser.add_argument("--worktree", action="store_true", help="use the working tree, uncommitted edits included (preview only)")
    parser.add_argument(
        "--identity",
        default=os.environ.get("RECONCILER_IDENTITY"),
        help="SSH private key for the hosts (default: $RECONCILER_IDENTITY)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="SSH connect timeout per host, seconds")


def is_tty() -> bool:
    return sys.stdout.isatty()
