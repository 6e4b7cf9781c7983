"""Helpers for tests that need a real PostgreSQL: a throw-away cluster.

Shipped with the package (as structlog ships its testing helpers) so every
test module, and other engineers' tests, start clusters the same way.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import tempfile
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def can_run_cluster() -> bool:
    """Whether this process may start a cluster (root, and the server installed)."""
    import glob

    return os.geteuid() == 0 and bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@contextlib.contextmanager
def scratch_cluster() -> Iterator[tuple[str, pathlib.Path]]:
    """Start a cluster on a free port in a fresh short-named directory.

    Yields ``(dsn, state_dir)``; stops the cluster and removes its files after.
    The directory is made under /tmp (short: the unix socket path is limited)
    and world-traversable, since the server runs as the postgres user.
    """
    from reconciler.sandbox import postgres

    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="rpg-", dir="/tmp"))
    state_dir.chmod(0o755)
    try:
        yield postgres.ensure_cluster(state_dir, port=free_port()), state_dir
    finally:
        postgres.remove_cluster(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
