"""Processes and mounts the sandbox owns: start detached, find, stop, unmount.

A previous run may have died at any point, so nothing here trusts a pidfile
alone: a process is ours when its pidfile says so, when its command line
names the state directory, when it lives in one of our network namespaces,
or when it sits in one of our container cgroups (``--cgroup-parent rcl-hN``),
which is the only way to find container processes whose shim was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from reconciler.errors import SandboxError

CGROUP_MARK = "/rcl-h"


def run(argv: Sequence[str], *, what: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a short infrastructure command; a failure names ``what`` and stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True)
    except FileNotFoundError:
        proc = subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not installed "
                                           "(scripts/setup-system.sh installs it)")
    if check and proc.returncode != 0:
        raise SandboxError(f"{what}: `{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def spawn_detached(argv: Sequence[str], log: Path) -> int:
    """Start a daemon in its own session with output appended to ``log``; return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    return proc.pid


def tail(log: Path, lines: int = 5) -> str:
    """The last lines of a daemon's log, for error messages."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A zombie has exited; only its parent's wait is missing.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def live_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process still runs; removes a stale pidfile."""
    pid = read_pidfile(path)
    if alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _ancestors() -> set[int]:
    """Our own pid and parents: never ours to kill, whatever their cmdline says."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _in_our_cgroup(pid: int, marks: Iterable[str]) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return False
    return any(mark in text for mark in marks)


def find_ours(*, path_marks: Iterable[str], netns_inodes: Iterable[int] = (),
              cgroup_marks: Iterable[str] = ()) -> list[int]:
    """Pids whose cmdline names a path in ``path_marks``, or whose netns or cgroup is ours."""
    paths, inodes, cgroups = tuple(path_marks), set(netns_inodes), tuple(cgroup_marks)
    spared = _ancestors()
    found = []
    for pid in _all_pids():
        if pid in spared:
            continue
        line = cmdline(pid)
        if not line:
            continue  # kernel threads and exited processes
        if (any(p in line for p in paths) or (inodes and _netns_inode(pid) in inodes)
                or (cgroups and _in_our_cgroup(pid, cgroups))):
            found.append(pid)
    return found


def stop_pids(pids: Iterable[int], *, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is left."""
    pids = [p for p in pids if alive(p)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    if not wait_until(lambda: not any(alive(p) for p in pids), timeout=grace):
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        wait_until(lambda: not any(alive(p) for p in pids), timeout=5)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``root``, deepest first (the order to unmount them in)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    prefix = str(root).rstrip("/")
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = _unescape_mountinfo(fields[4])
            if point == prefix or point.startswith(prefix + "/"):
                points.add(point)
    return sorted(points, key=lambda p: (p.count("/"), p), reverse=True)


def unmount_under(root: Path) -> None:
    """Lazily unmount everything below ``root``; dockerd leaves overlay and nsfs mounts."""
    for _ in range(3):  # a lazy unmount can reveal a mount that was stacked beneath
        points = mounts_under(root)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True)
    left = mounts_under(root)
    if left:
        raise SandboxError(f"mounts: could not unmount {', '.join(left[:5])}")
