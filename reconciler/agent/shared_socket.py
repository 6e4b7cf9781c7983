"""A unix socket others may reach: the nudge socket, the API socket.

Bound under a temporary name beside its path and renamed into place only
once its group and mode are right, so it is never reachable with the
umask's mode or the agent's own group; the rename replaces a socket left by
an agent that died.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

from reconciler.errors import StalledError

T = TypeVar("T")


def publish(path: Path, *, group: int, mode: int, bind: Callable[[str], T], close: Callable[[T], None],
            what: str, whose: str, hint: str = "") -> T:
    """``bind(staging path)`` (which returns the bound socket or server), then
    the group and mode, then the rename to ``path``.  A group the agent may
    not give is a ``StalledError`` naming ``what`` and ``whose`` group it
    should be (a human must fix the agent's groups); nothing is left behind."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        staging.unlink()
    except FileNotFoundError:
        pass
    bound = bind(str(staging))
    try:
        os.chown(staging, -1, group)
        os.chmod(staging, mode)
    except PermissionError as exc:
        close(bound)
        staging.unlink()
        raise StalledError(f"{path}: cannot give the {what} {whose} (gid {group}): {exc.strerror}{hint}") from exc
    os.replace(staging, path)
    return bound
