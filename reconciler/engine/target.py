"""What a run acts on: one environment of the repository at one commit,
with the keys that commit pins and the identity that reaches its hosts."""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import InvalidDesiredState, StalledError
from reconciler.core.model import Environment


@dataclass(frozen=True)
class Target:
    environment: Environment
    revision: str
    repo: Path
    known_hosts_file: str
    identity_file: str

    @contextlib.contextmanager
    def observing(self, observe, timeout: float = 10.0):
        """Every host being opened with the commit's pins and observed,
        ``observe(driver)`` on each host's connection as soon as it is up, in
        the background: the body goes on meanwhile, and ``.result()`` of what
        it is given waits for every host's observation (or raises naming each
        host that failed).  Closed after."""
        from reconciler.adapters import fleet  # the adapter; this module stays free of SSH

        opening = fleet.start_opening(self.environment.hosts, identity_file=self.identity_file,
                                      known_hosts_file=self.known_hosts_file, timeout=timeout, then=observe)
        try:
            yield _Observations(opening)
        finally:
            opening.close()


@dataclass(frozen=True)
class _Observations:
    opening: object

    def result(self) -> dict:
        """host name -> what ``observe`` returned for it."""
        return self.opening.result()[1]

    def hosts(self) -> dict:
        """host name -> its driver, open until the block ends (waits, as ``result``)."""
        return self.opening.result()[0]


def load_target(args) -> Target:
    """The environment desired at the chosen commit, with its pinned keys on disk."""
    from reconciler.core import schema
    from reconciler.adapters import source

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
    from reconciler.adapters import secrets

    environment = secrets.resolve(schema.load_environment(snapshot, name))  # keyed digests of encrypted secrets
    pins = snapshot.files.get(environment.known_hosts)
    if pins is None:
        raise InvalidDesiredState([f"{environment.known_hosts}:1:1: known_hosts file is missing; pin every host's key there"])
    if not args.identity:
        raise StalledError("no SSH identity: pass --identity FILE or set RECONCILER_IDENTITY")
    return Target(environment, revision, repo, pinned_keys_file(pins), args.identity)


def pinned_keys_file(content: bytes) -> str:
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
