"""Processes and mounts the sandbox owns: start detached, find, stop, unmount.

A previous run may have died at any point, so nothing here trusts a pidfile
alone: a process is ours when its pidfile says so, when its command line
names the state directory, when it lives in one of our network namespaces,
or when it sits in one of our container cgroups (``--cgroup-parent rcl-hN``),
which is the only way to find container processes whose shim was killed.

Readiness is polled (``poll``) against a deadline that fits two loaded cores,
each look given the time that is left rather than a fixed second (a daemon
that needs 1.5 s to answer under load never answers a 1 s probe), and a part
that does not come up is stopped and started once more (``retry_once``)
before ``up`` gives up, saying what it waited for and what it saw last.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from reconciler.errors import SandboxError

CGROUP_MARK = "/rcl-h"
# No single look blocks longer than this, so a wedged connection is dropped
# and the next look starts afresh while the deadline still has time.
PROBE_CAP = 15.0
PROBE_FLOOR = 1.0  # even at the deadline a look gets this long

# A probe is given the seconds it may block; it returns None when the part
# is ready, else what it saw ("connection refused", "no banner within 3.0s").
Probe = Callable[[float], str | None]
T = TypeVar("T")


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
        # cwd "/": a daemon outlives the directory it was started from (a CI
        # clone, a test's tmp dir), and HAProxy's master re-executes itself
        # on every reload, which fails once its start directory is gone.
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True, cwd="/")
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


def pid_in(path: Path) -> int | None:
    """The pid in ``path`` if that process still runs; never touches the file.

    What readiness polls call: a daemon truncates its pidfile before it
    writes its pid, and a reader that removed the file it found empty would
    remove the daemon's only pidfile (sshd writes it once, after binding).
    """
    pid = read_pidfile(path)
    return pid if alive(pid) else None


def live_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process still runs; removes a stale pidfile.

    Only a file naming a dead process is stale: an empty one may be a pidfile
    being written this instant (see ``pid_in``), so it is left alone.
    """
    pid = read_pidfile(path)
    if alive(pid):
        return pid
    if pid is not None:
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


def poll(what: str, waiting_for: str, probe: Probe, *, timeout: float, interval: float = 0.2,
         gone: Callable[[], str | None] = lambda: None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> float:
    """Look with ``probe`` until it says ready; return the seconds that took.

    Each look may block for the time left (between PROBE_FLOOR and
    PROBE_CAP).  Raises SandboxError at the deadline, or at once when
    ``gone()`` says why the process waited for cannot answer any more (it
    exited), naming ``what``, what it waited for and the last thing seen.
    """
    started = clock()
    deadline = started + timeout
    looks = 0
    while True:
        looks += 1
        seen = probe(min(PROBE_CAP, max(PROBE_FLOOR, deadline - clock())))
        if seen is None:
            return clock() - started
        why = gone()
        elapsed = clock() - started
        if why:
            raise SandboxError(f"{what}: {why} after {elapsed:.1f}s, while waiting for {waiting_for}; "
                               f"the last of {looks} looks saw: {seen}")
        if clock() >= deadline:
            raise SandboxError(f"{what}: gave up after {elapsed:.1f}s (deadline {timeout:.0f}s) waiting for "
                               f"{waiting_for}; the last of {looks} looks saw: {seen}")
        sleep(max(0.0, min(interval, deadline - clock())))


def retry_once(what: str, first: Callable[[], T], again: Callable[[], T] | None = None,
               *, note: Callable[[str], None] | None = None) -> T:
    """``first()``; when it raises SandboxError, ``again()`` once (default: ``first``).

    ``again`` is the full restart (stop, start, wait) when ``first`` only
    waited for a part started earlier.  A second failure names both.
    """
    try:
        return first()
    except SandboxError as exc:
        (note or _note)(f"{what}: {exc}\n{what}: stopping it and starting it once more")
        try:
            return (again or first)()
        except SandboxError as second:
            raise SandboxError(f"{what} did not come up twice.\nfirst try: {exc}\nsecond try: {second}") from second


def _note(message: str) -> None:
    # A retry makes ``up`` slower: say why on stderr, where daemons' notes go.
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


def tcp_banner(address: str, port: int, prefix: bytes, limit: float) -> str | None:
    """None when ``address:port`` accepts and sends a first line starting
    with ``prefix`` within ``limit`` seconds (connect and banner together);
    else what happened."""
    end = time.monotonic() + limit
    try:
        with socket.create_connection((address, port), timeout=limit) as conn:
            conn.settimeout(max(0.05, end - time.monotonic()))
            try:
                data = conn.recv(64)
            except TimeoutError:
                return f"connected to {address}:{port}, no banner within {limit:.1f}s"
    except TimeoutError:
        return f"no TCP answer from {address}:{port} within {limit:.1f}s"
    except ConnectionRefusedError:
        return f"{address}:{port} refused the connection"
    except OSError as exc:
        return f"{address}:{port}: {exc.strerror or exc}"
    if data.startswith(prefix):
        return None
    return f"{address}:{port} closed the connection without a banner" if not data else \
        f"{address}:{port} sent {data[:24]!r}, not {prefix!r}..."


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
