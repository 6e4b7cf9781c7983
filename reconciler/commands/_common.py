"""What the commands that act on an environment share: which repository,
which environment, which commit, which SSH identity."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import InvalidDesiredState, StalledError
from reconciler.model import Environment


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


@dataclass(frozen=True)
class Target:
    environment: Environment
    revision: str
    repo: Path
    known_hosts_file: str
    identity_file: str


def load_target(args: argparse.Namespace) -> Target:
    """The environment desired at the chosen commit, with its pinned keys on disk."""
    from reconciler import schema, source

    repo = Path(args.repo).resolve()
    if getattr(args, "worktree", False):
        snapshot = source.snapshot_worktree(repo)
        revision = "worktree"
    else:
        revision = source.head_commit(repo, args.rev)
        snapshot = source.snapshot_commit(repo, revision)
    names = schema.list_environments(snapshot)
    name = args.env
    if name is None:
        if len(names) != 1:
            raise StalledError(f"{repo}: choose an environment with --env (one of: {', '.join(names) or 'none found'})")
        name = names[0]
    elif name not in names:
        raise StalledError(f"{repo}: no environment {name!r} (have: {', '.join(names) or 'none'})")
    environment = schema.load_environment(snapshot, name)
    pins = snapshot.files.get(environment.known_hosts)
    if pins is None:
        raise InvalidDesiredState([f"{environment.known_hosts}:1:1: known_hosts file is missing; pin every host's key there"])
    if not args.identity:
        raise StalledError("no SSH identity: pass --identity FILE or set RECONCILER_IDENTITY")
    return Target(environment, revision, repo, _pinned_keys_file(pins), args.identity)


def _pinned_keys_file(content: bytes) -> str:
    """The pins as they are in the commit, on disk for paramiko to read.

    Read from the commit, never from the working tree: the keys that are
    trusted are the ones git can explain.
    """
    handle = tempfile.NamedTemporaryFile(prefix="reconciler-known_hosts-", delete=False)
    with handle:
        handle.write(content)
    atexit.register(_unlink_quietly, handle.name)
    return handle.name


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def is_tty() -> bool:
    return sys.stdout.isatty()
