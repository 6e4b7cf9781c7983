"""reconciler init: start a new environment repository from templates/."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="where to create it (must not exist, or be empty)")


def create(directory: Path, templates: Path | None = None) -> str:
    """Copy ``templates`` (default: this installation's) into ``directory``,
    commit it; return the commit id."""
    import pygit2

    from reconciler import resources

    templates = resources.path("templates") if templates is None else templates
    if not templates.is_dir():
        raise FileNotFoundError(f"templates not found at {templates}")
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty")
    shutil.copytree(templates, directory, dirs_exist_ok=True, symlinks=True)
    repo = pygit2.init_repository(str(directory), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    tree = repo.index.write_tree()
    try:
        author = repo.default_signature
    except (KeyError, pygit2.GitError):
        author = pygit2.Signature("reconciler init", "reconciler@localhost")
    commit = repo.create_commit("HEAD", author, author, "Start environment repository (reconciler init)", tree, [])
    return str(commit)


def run(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    try:
        commit = create(directory)
    except (FileExistsError, FileNotFoundError) as exc:
        print(f"reconciler init: {exc}", file=sys.stderr)
        return 1
    print(f"created {directory} at {commit[:12]}; next: edit environments/*/environment.yaml, "
          f"then `reconciler validate --repo {directory}`")
    return 0
