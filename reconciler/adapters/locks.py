"""Per-environment locks: one reconcile at a time, and manual freezes.

Two files per environment under ``<state>/locks/``:

- ``<env>.lock``: held while a reconcile runs; JSON with the owner (pid,
  host), the commit, the start time and a heartbeat refreshed by a thread.
  A lock whose owner is a dead process on this machine, or whose heartbeat is
  older than ``stale_after`` (an owner elsewhere we cannot ask), is stale and
  is taken over.
- ``<env>.freeze``: a manual freeze (``reconciler lock ENV --reason ...``);
  no reconcile acts while it exists, and status shows who froze it and why.

Reading, judging and replacing a lock happen under an ``flock`` on a guard
file so that two agents racing for a stale lock cannot both win; the flock
is released by the kernel if its holder dies, so the guard itself can never
go stale.

Two users meet here: the agent (the unit's ``reconciler`` user) and whoever
runs ``reconciler lock`` (a pusher in the ``reconciler`` group).  So the
locks directory is group-writable and set-group-id, the files are written
readable by both, and the guard is opened read-only (``flock`` needs no
write access), whoever created it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import os
import socket
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from reconciler.errors import LockHeld
from reconciler.adapters.journal import SHARED_FILE_MODE, read_json
from reconciler.adapters.journal import atomic_write_json as write_shared_json

HEARTBEAT_INTERVAL = 5.0
STALE_AFTER = 60.0
LOCKS_DIR_MODE = 0o2770  # the group may freeze; new files take the directory's group


def prepare_locks_dir(state_dir: Path) -> Path:
    """Create ``<state>/locks`` so that the pushers' group can freeze there.

    Only the directory's owner may change its mode; a directory someone else
    created is left as it is (the unit's StateDirectory is the agent's own).
    """
    path = Path(state_dir) / "locks"
    path.mkdir(parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != LOCKS_DIR_MODE:
        os.chmod(path, LOCKS_DIR_MODE)
    return path


@dataclass(frozen=True)
class LockInfo:
    environment: str
    pid: int
    host: str
    commit: str
    started: float
    heartbeat: float


@dataclass(frozen=True)
class Freeze:
    environment: str
    reason: str
    by: str
    since: float


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # kill(0 or -n) would signal a process group, not ask about a pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class Locks:
    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        hostname: str | None = None,
        pid: int | None = None,
        stale_after: float = STALE_AFTER,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.dir = Path(state_dir) / "locks"
        self.clock = clock
        self.hostname = hostname or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.stale_after = stale_after
        self.heartbeat_interval = heartbeat_interval

    def _lock_path(self, env: str) -> Path:
        return self.dir / f"{env}.lock"

    def _freeze_path(self, env: str) -> Path:
        return self.dir / f"{env}.freeze"

    @contextlib.contextmanager
    def _guard(self, env: str) -> Iterator[None]:
        if not self.dir.is_dir():
            prepare_locks_dir(self.dir.parent)
        # Read-only: flock needs no write access, and the guard may belong to the other user.
        fd = os.open(self.dir / f".{env}.guard", os.O_RDONLY | os.O_CREAT, SHARED_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ----------------------------------------------------------- reading
    def environments(self) -> list[str]:
        """Every environment with a lock or a freeze file, sorted."""
        if not self.dir.is_dir():
            return []
        return sorted({p.stem for p in self.dir.glob("*.lock")} | {p.stem for p in self.dir.glob("*.freeze")})

    def holder(self, env: str) -> LockInfo | None:
        doc = read_json(self._lock_path(env))
        return LockInfo(**doc) if doc else None

    def frozen(self, env: str) -> Freeze | None:
        doc = read_json(self._freeze_path(env))
        return Freeze(**doc) if doc else None

    def is_stale(self, info: LockInfo) -> bool:
        if info.host == self.hostname and not pid_alive(info.pid):
            return True
        return self.clock() - info.heartbeat > self.stale_after

    # ----------------------------------------------------------- the run lock
    def acquire(self, env: str, commit: str) -> LockInfo:
        """Take the environment's lock or raise LockHeld naming the holder or the freeze."""
        with self._guard(env):
            freeze = self.frozen(env)
            if freeze is not None:
                raise LockHeld(f"{env} is frozen by {freeze.by} since {_when(freeze.since)}: {freeze.reason}")
            current = self.holder(env)
            if current is not None and not (current.host == self.hostname and current.pid == self.pid):
                if not self.is_stale(current):
                    raise LockHeld(
                        f"{env} is being reconciled by pid {current.pid} on {current.host} "
                        f"(commit {current.commit[:12]}, since {_when(current.started)})"
                    )
            now = self.clock()
            info = LockInfo(env, self.pid, self.hostname, commit, now, now)
            write_shared_json(self._lock_path(env), asdict(info))
            return info

    def heartbeat(self, env: str) -> None:
        with self._guard(env):
            current = self.holder(env)
            if current is None or (current.pid, current.host) != (self.pid, self.hostname):
                return  # taken over (we were judged stale): never overwrite the new owner
            write_shared_json(self._lock_path(env), {**asdict(current), "heartbeat": self.clock()})

    def release(self, env: str) -> None:
        with self._guard(env):
            current = self.holder(env)
            if current is not None and (current.pid, current.host) == (self.pid, self.hostname):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._lock_path(env))

    @contextlib.contextmanager
    def held(self, env: str, commit: str) -> Iterator[LockInfo]:
        """The lock for the length of a block, its heartbeat kept by a thread."""
        info = self.acquire(env, commit)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval):
                try:
                    self.heartbeat(env)
                except OSError:
                    pass  # a full disk must not kill the deploy; staleness is judged by age

        thread = threading.Thread(target=beat, name=f"heartbeat-{env}", daemon=True)
        thread.start()
        try:
            yield info
        finally:
            stop.set()
            thread.join()
            self.release(env)

    # ----------------------------------------------------------- freezes
    def freeze(self, env: str, reason: str, by: str | None = None) -> Freeze:
        with self._guard(env):
            info = Freeze(env, reason, by or _who(), self.clock())
            write_shared_json(self._freeze_path(env), asdict(info))
            return info

    def unfreeze(self, env: str) -> Freeze | None:
        with self._guard(env):
            previous = self.frozen(env)
            try:
                os.unlink(self._freeze_path(env))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            return previous


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a container's bare uid)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
