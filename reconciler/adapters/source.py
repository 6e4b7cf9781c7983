"""The git adapter: working trees and commits -> ``Snapshot``.

The only module that reads the environment repository from disk.  It records
facts (a file's bytes, a symlink's target, an oversize file's size) and leaves
the verdict to ``reconciler.core.schema``; it never follows a symlink, so nothing
outside the repository is ever read.

``snapshot_commit`` reads a commit's tree straight from the object database,
without a checkout, so it works on a bare repository.  Inside a pre-receive
hook the pushed objects sit in a quarantine directory that git names in
GIT_OBJECT_DIRECTORY / GIT_ALTERNATE_OBJECT_DIRECTORIES; they are added as
alternates so the pushed commit can be read before it is accepted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pygit2

from reconciler.errors import SourceError
from reconciler.core.schema import MAX_FILE_BYTES, Snapshot

_SKIPPED_DIRS = {".git"}


def snapshot_worktree(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> Snapshot:
    """The files under ``path`` as they are on disk (``.git`` excluded)."""
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    oversize: dict[str, int] = {}
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(directory)
        # Symlinked directories show up in dirnames; os.walk does not descend
        # into them with followlinks=False, so record them as links instead.
        for name in list(dirnames):
            if name in _SKIPPED_DIRS and here == root:
                dirnames.remove(name)
            elif (here / name).is_symlink():
                links[_relative(root, here / name)] = os.readlink(here / name)
        for name in filenames:
            full = here / name
            rel = _relative(root, full)
            info = full.lstat()
            if stat.S_ISLNK(info.st_mode):
                links[rel] = os.readlink(full)
            elif not stat.S_ISREG(info.st_mode):
                continue  # sockets, fifos, devices are no part of a repository
            elif info.st_size > max_bytes:
                oversize[rel] = info.st_size
            else:
                files[rel] = _read_regular(full, max_bytes, oversize, rel)
    files = {k: v for k, v in files.items() if k not in oversize}
    return Snapshot(files=files, links=links, oversize=oversize)


def _read_regular(full: Path, max_bytes: int, oversize: dict[str, int], rel: str) -> bytes:
    # O_NOFOLLOW: the file may have been swapped for a symlink since lstat.
    fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        oversize[rel] = len(data)
    return data


def _relative(root: Path, full: Path) -> str:
    return full.relative_to(root).as_posix()


def open_repository(repo_path: str | os.PathLike[str]) -> pygit2.Repository:
    """The repository at or above ``repo_path`` (bare or not), quarantine included."""
    found = pygit2.discover_repository(str(repo_path))
    if found is None:
        raise SourceError(f"{repo_path}: not a git repository")
    repo = pygit2.Repository(found)
    extra = [os.environ.get("GIT_OBJECT_DIRECTORY", "")]
    extra += os.environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES", "").split(os.pathsep)
    for directory in filter(None, extra):
        if Path(directory).is_dir():
            repo.odb.add_disk_alternate(directory)
    return repo


def head_commit(repo_path: str | os.PathLike[str], ref: str = "HEAD") -> str:
    """The commit id ``ref`` (a branch, tag, HEAD or id) points at."""
    return str(_commit(open_repository(repo_path), ref).id)


def _commit(repo: pygit2.Repository, rev: str) -> pygit2.Commit:
    try:
        obj = repo.revparse_single(rev)
        return obj.peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as exc:
        raise SourceError(f"unknown revision {rev!r}: {exc}") from exc


def snapshot_commit(repo_path: str | os.PathLike[str], rev: str, subdir: str = "", max_bytes: int = MAX_FILE_BYTES) -> Snapshot:
    """The files of ``rev`` (under ``subdir``, if given), read without a checkout."""
    repo = open_repository(repo_path)
    commit = _commit(repo, rev)
    tree = commit.tree
    subdir = subdir.strip("/")
    if subdir and subdir != ".":
        try:
            entry = tree[subdir]
        except KeyError as exc:
            raise SourceError(f"{subdir!r} does not exist in {rev}") from exc
        tree = repo[entry.id]
        if not isinstance(tree, pygit2.Tree):
            raise SourceError(f"{subdir!r} is not a directory in {rev}")
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    oversize: dict[str, int] = {}
    _walk(repo, tree, "", files, links, oversize, max_bytes)
    return Snapshot(files=files, links=links, oversize=oversize, revision=str(commit.id))


def _walk(repo, tree, prefix, files, links, oversize, max_bytes) -> None:
    for entry in tree:
        path = f"{prefix}{entry.name}"
        if entry.filemode == pygit2.enums.FileMode.TREE:
            _walk(repo, repo[entry.id], path + "/", files, links, oversize, max_bytes)
        elif entry.filemode == pygit2.enums.FileMode.LINK:
            links[path] = repo[entry.id].data.decode("utf-8", "replace")
        elif entry.filemode in (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE):
            _, size = repo.odb.read_header(entry.id)  # the size without loading a huge blob
            if size > max_bytes:
                oversize[path] = size
            else:
                files[path] = repo[entry.id].data
        # Submodules (commit entries) carry no content here; they are skipped.
