"""Shared by validate and render: turn --repo [--rev REV] into a Snapshot.

``--repo`` may name a working tree (or a directory inside one), read as it
is on disk, or, with ``--rev`` or when it is a bare repository, a commit read
from the object database without a checkout (what the pre-receive hook does).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reconciler.cli.commands._common import add_repo_argument


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    add_repo_argument(parser, positional_alias=True)
    parser.add_argument("--rev", help="read this commit instead of the working tree (default for a bare repository: HEAD)")


def _is_bare(path: Path) -> bool:
    """A bare repository's directory: git's own files and no working tree."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def load_snapshot(args: argparse.Namespace):
    # Imported here so that `reconciler --help` does not load pygit2.
    from reconciler.adapters import source

    rev = args.rev or ("HEAD" if _is_bare(Path(args.repo)) else None)
    if not rev:
        return source.snapshot_worktree(args.repo)
    repo = source.open_repository(args.repo)
    subdir = ""
    if repo.workdir:
        # `validate --rev HEAD --repo desired-state/` reads that directory of the commit.
        subdir = os.path.relpath(Path(args.repo).resolve(), Path(repo.workdir).resolve())
        subdir = "" if subdir == "." else Path(subdir).as_posix()
    return source.snapshot_commit(args.repo, rev, subdir=subdir)
