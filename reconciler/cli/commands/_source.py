"""Shared by validate and render: turn PATH [--rev REV] into a Snapshot."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reconciler.core.schema import Snapshot


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default=".", metavar="REPO_OR_PATH", help="environment repository (working tree, or any repository with --rev); default: .")
    parser.add_argument("--rev", help="read this commit instead of the working tree (works on a bare repository)")


def load_snapshot(args: argparse.Namespace) -> Snapshot:
    # Imported here so that `reconciler --help` does not load pygit2.
    from reconciler.adapters import source

    if not args.rev:
        return source.snapshot_worktree(args.path)
    repo = source.open_repository(args.path)
    subdir = ""
    if repo.workdir:
        # `validate --rev HEAD desired-state/` reads that directory of the commit.
        subdir = os.path.relpath(Path(args.path).resolve(), Path(repo.workdir).resolve())
        subdir = "" if subdir == "." else Path(subdir).as_posix()
    return source.snapshot_commit(args.path, args.rev, subdir=subdir)
