"""Environment repositories made with pygit2 in a temporary directory, for
the agent's unit tests (gitlog, reconcile, agent, hooks)."""

from __future__ import annotations

from pathlib import Path

import pygit2

DIGEST1 = "sha256:" + "11" * 32
DIGEST2 = "sha256:" + "22" * 32
DIGEST3 = "sha256:" + "33" * 32  # never healthy in the fake registry


def env_yaml(digest: str = DIGEST1, *, tag: str = "v1", on_failure: str = "revert", repository: str = "registry.example:5000/demo/web", ports: bool = False) -> str:
    ports_text = '    ports:\n      - "8080:8080"\n' if ports else ""
    return f"""\
# staging: one host
hosts:
  h1: {{address: 10.0.0.1, groups: [web]}}

policy:
  on_failure: {on_failure}   # revert | note

services:
  web:
    # the image is promoted from staging, never typed by hand
    image: {repository}:{tag}@{digest}
    hosts: [web]
{ports_text}    env:
      APP_ENV: test
    health:
      type: running
"""


def files_for(digest: str = DIGEST1, *, env: str = "staging", **kwargs) -> dict[str, str]:
    return {
        f"environments/{env}/environment.yaml": env_yaml(digest, **kwargs),
        f"environments/{env}/known_hosts": "# pinned keys\n",
    }


def init(path: Path, *, bare: bool = False) -> pygit2.Repository:
    repo = pygit2.init_repository(str(path), bare=bare, initial_head="main")
    repo.config["user.name"] = "Test User"
    repo.config["user.email"] = "user@example.com"
    return repo


def commit(
    repo: pygit2.Repository,
    files: dict[str, str | None],
    message: str = "change",
    *,
    branch: str = "refs/heads/main",
    author: tuple[str, str] = ("Alice", "alice@example.com"),
    committer: tuple[str, str] | None = None,
    when: int | None = None,
) -> str:
    """A commit on ``branch`` setting (or, with None, deleting) ``files``; no checkout."""
    index = pygit2.Index()
    parents = []
    if branch in repo.references:
        parent = repo.references[branch].peel(pygit2.Commit)
        index.read_tree(parent.tree)
        parents = [parent.id]
    for path, text in files.items():
        if text is None:
            index.remove(path)
        else:
            blob = repo.create_blob(text.encode())
            index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
    tree = index.write_tree(repo)
    kw = {} if when is None else {"time": when, "offset": 0}
    a = pygit2.Signature(*author, **kw)
    c = pygit2.Signature(*(committer or author), **kw)
    return str(repo.create_commit(branch, a, c, message, tree, parents))


def read(repo: pygit2.Repository, rev: str, path: str) -> str:
    tree = repo.revparse_single(rev).peel(pygit2.Commit).tree
    return repo[tree[path].id].data.decode()
