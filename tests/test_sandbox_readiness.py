"""Readiness of the sandbox's parts on a busy machine (issue 13, first bullet).

The first `make demo` failed with "sshd for h3 did not answer on
10.213.0.13:22 within 10s" while that sshd's log said it was listening.
These tests reproduce the two ways the old wait lost a live sshd, on
loopback listeners of our own (never the shared fleet):

- a daemon that needs more than a second to greet never answered a look
  capped at one second, however long the deadline;
- a reader that found the pidfile empty (the daemon truncates it, then
  writes its pid) deleted it, and sshd writes its pidfile only once.

and check that a part that never answers, or exits, is reported with what
was waited for and what was seen last.  The down/up cycles under load are
in tests/test_sandbox.py (fleet, slow).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reconciler.errors import SandboxError
from reconciler.sandbox import engines, postgres, procs, registry, sshd
from reconciler.sandbox.layout import HostLayout

# A stand-in daemon: takes a while to write its pidfile (truncate, pause,
# write, as a C daemon's fopen/fprintf/fclose does), then greets each
# connection after GREET_DELAY seconds, or never when it is negative.
FAKE_DAEMON = textwrap.dedent("""
    import os, socket, sys, time
    pidfile, port_file, banner, greet_delay, pid_delay = sys.argv[1], sys.argv[2], sys.argv[3].encode(), float(sys.argv[4]), float(sys.argv[5])
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    f = open(pidfile, "w")      # truncated: empty for a while
    with open(port_file + ".tmp", "w") as p:
        p.write(str(server.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    time.sleep(pid_delay)
    f.write(f"{os.getpid()}\\n")
    f.close()
    while True:
        conn, _ = server.accept()
        if greet_delay >= 0:
            time.sleep(greet_delay)
            try:
                conn.sendall(banner + b"\\r\\n")
            except OSError:
                pass  # the look gave up before the greeting: as sshd, carry on
            conn.close()
        # else: keep it open, say nothing
""")


class FakeDaemon:
    def __init__(self, tmp_path: Path, *, config: Path, banner: str = "SSH-2.0-fake", greet_delay: float = 0.0,
                 pid_delay: float = 0.0, pidfile: Path | None = None) -> None:
        self.pidfile = pidfile or tmp_path / "daemon.pid"
        port_file = tmp_path / "port"
        port_file.unlink(missing_ok=True)
        # The config path on the command line: what sshd.probe checks the pid against.
        self.proc = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, str(self.pidfile), str(port_file), banner,
                                      str(greet_delay), str(pid_delay), "-f", str(config)])
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, "fake daemon did not start"
            time.sleep(0.02)
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A sandbox host layout under tmp_path whose address is loopback."""
    monkeypatch.setattr(HostLayout, "address", property(lambda self: "127.0.0.1"))
    h = HostLayout(3, tmp_path / "h3")
    h.root.mkdir()
    h.sshd_config.write_text("# fake\n")
    h.sshd_log.write_text("Server listening on 127.0.0.1 port 22.\n")
    return h


def test_a_daemon_that_greets_late_never_answers_a_one_second_look_but_answers_the_deadline(host, tmp_path, monkeypatch):
    late = FakeDaemon(tmp_path, config=host.sshd_config, greet_delay=1.5, pidfile=host.sshd_pidfile)
    try:
        monkeypatch.setattr(sshd, "SSH_PORT", late.port)
        # The old wait: every look capped at 1 s, so no look could ever succeed.
        assert "no banner within 1.0s" in procs.tcp_banner("127.0.0.1", late.port, b"SSH-", 1.0)
        took = procs.poll("sshd for h3", "its banner", lambda limit: sshd.probe(host, limit), timeout=60,
                          gone=lambda: sshd._gone(host))
        assert took >= 1.4
    finally:
        late.stop()


def test_a_pidfile_being_written_is_not_deleted_by_the_wait(host, tmp_path, monkeypatch):
    slow = FakeDaemon(tmp_path, config=host.sshd_config, pid_delay=1.0, pidfile=host.sshd_pidfile)
    try:
        monkeypatch.setattr(sshd, "SSH_PORT", slow.port)
        assert host.sshd_pidfile.exists() and host.sshd_pidfile.read_text() == ""  # truncated, pid not yet written
        assert procs.live_pid(host.sshd_pidfile) is None
        assert host.sshd_pidfile.exists()  # the old live_pid removed it here, and sshd never writes it again
        assert sshd.probe(host, 1.0).startswith("no running sshd named in")
        procs.poll("sshd for h3", "its pidfile, then its banner", lambda limit: sshd.probe(host, limit), timeout=60,
                   gone=lambda: sshd._gone(host))
        assert procs.pid_in(host.sshd_pidfile) == slow.proc.pid
    finally:
        slow.stop()


def test_live_pid_removes_only_a_pidfile_naming_a_dead_process(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "x.pid"
    path.write_text(f"{dead.pid}\n")
    assert procs.pid_in(path) is None and path.exists()
    assert procs.live_pid(path) is None and not path.exists()
    path.write_text(f"{os.getpid()}\n")
    assert procs.live_pid(path) == os.getpid() == procs.pid_in(path)


def test_a_daemon_that_never_greets_is_reported_with_what_was_awaited_and_seen(host, tmp_path, monkeypatch):
    mute = FakeDaemon(tmp_path, config=host.sshd_config, greet_delay=-1, pidfile=host.sshd_pidfile)
    try:
        monkeypatch.setattr(sshd, "SSH_PORT", mute.port)
        with pytest.raises(SandboxError) as failed:
            procs.poll("sshd for h3", f"an SSH banner on 127.0.0.1:{mute.port}", lambda limit: sshd.probe(host, limit),
                       timeout=3, gone=lambda: sshd._gone(host))
        message = str(failed.value)
        assert message.startswith("sshd for h3: gave up after ")
        assert f"(deadline 3s) waiting for an SSH banner on 127.0.0.1:{mute.port}" in message
        assert f"saw: connected to 127.0.0.1:{mute.port}, no banner within" in message
    finally:
        mute.stop()


def test_a_daemon_that_exits_is_reported_at_once_with_its_log(host, tmp_path, monkeypatch):
    gone = FakeDaemon(tmp_path, config=host.sshd_config, pidfile=host.sshd_pidfile)
    monkeypatch.setattr(sshd, "SSH_PORT", gone.port)
    gone.stop()
    started = time.monotonic()
    with pytest.raises(SandboxError) as failed:
        procs.poll("sshd for h3", "its banner", lambda limit: sshd.probe(host, limit), timeout=300,
                   gone=lambda: sshd._gone(host))
    assert time.monotonic() - started < 60  # not the 300 s deadline (generous bound: a loaded machine)
    message = str(failed.value)
    assert f"no sshd -f {host.sshd_config} runs any more (it exited; see {host.sshd_log}" in message
    assert "Server listening on 127.0.0.1 port 22." in message
    assert f"no running sshd named in {host.sshd_pidfile}" in message


def test_tcp_banner_says_what_it_met(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert procs.tcp_banner("127.0.0.1", port, b"SSH-", 2.0) == f"127.0.0.1:{port} refused the connection"
    http = FakeDaemon(tmp_path, config=tmp_path / "c", banner="HTTP/1.0 400 Bad")
    try:
        assert procs.tcp_banner("127.0.0.1", http.port, b"SSH-", 5.0) == \
            f"127.0.0.1:{http.port} sent b'HTTP/1.0 400 Bad\\r\\n', not b'SSH-'..."
    finally:
        http.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.limits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_poll_gives_each_look_the_time_left_between_floor_and_cap():
    clock = FakeClock()
    answers = iter(["refused", "refused", None])

    def probe(limit):
        clock.limits.append(limit)
        clock.now += 0.5
        return next(answers)

    assert procs.poll("x", "y", probe, timeout=100, interval=1, clock=clock, sleep=clock.sleep) == pytest.approx(3.5)
    assert clock.limits == [procs.PROBE_CAP] * 3

    clock = FakeClock()
    with pytest.raises(SandboxError, match=r"^x: gave up after 4\.0s \(deadline 3s\) waiting for y; the last of 3 looks saw: late"):
        procs.poll("x", "y", lambda limit: (clock.limits.append(limit), setattr(clock, "now", clock.now + 1))[0] or "late",
                   timeout=3, interval=0.5, clock=clock, sleep=clock.sleep)
    assert clock.limits == [3.0, 1.5, procs.PROBE_FLOOR]


def test_retry_once_restarts_once_and_names_both_failures():
    calls = []

    def flaky():
        calls.append("first")
        raise SandboxError("sshd for h3: gave up after 60.0s")

    notes = []
    assert procs.retry_once("sshd for h3", flaky, lambda: calls.append("again") or "up", note=notes.append) == "up"
    assert calls == ["first", "again"] and "stopping it and starting it once more" in notes[0]

    with pytest.raises(SandboxError, match=r"(?s)registry did not come up twice\.\nfirst try: one\nsecond try: two"):
        attempts = iter(["one", "two"])
        procs.retry_once("registry", lambda: (_ for _ in ()).throw(SandboxError(next(attempts))), note=notes.append)

    def bug():
        calls.append("bug")
        raise KeyError("a bug is not a readiness problem")

    with pytest.raises(KeyError):
        procs.retry_once("x", bug, note=notes.append)
    assert calls.count("bug") == 1


def test_an_engine_whose_process_died_is_reported_at_once(tmp_path):
    host = HostLayout(3, tmp_path / "h3")
    host.root.mkdir()
    host.dockerd_log.write_text("failed to start daemon: pid file found\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(SandboxError) as failed:
        engines._wait(host, dead.pid, timeout=300)
    message = str(failed.value)
    assert f"dockerd for h3: dockerd (pid {dead.pid}) exited" in message and "pid file found" in message
    assert f"waiting for a ping answer on {host.docker_socket}" in message
    assert f"no socket {host.docker_socket} yet" in message


def test_a_registry_that_answers_late_is_waited_for(tmp_path, monkeypatch):
    late = FakeDaemon(tmp_path, config=tmp_path / "registry.yml", banner="HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                      greet_delay=1.5)
    try:
        monkeypatch.setattr(registry, "REGISTRY", f"127.0.0.1:{late.port}")
        assert "timed out" in registry.probe(1.0)
        assert registry.probe(10.0) is None
    finally:
        late.stop()


def test_a_postmaster_pid_left_by_a_crash_is_cleared_only_when_stale(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pidfile = data / "postmaster.pid"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pidfile.write_text(f"{dead.pid}\n{data}\n")
    assert postgres.clear_stale_pidfile(data) and not pidfile.exists()
    # The pid now belongs to another program (this one, working elsewhere).
    pidfile.write_text(f"{os.getpid()}\n{data}\n")
    assert postgres.clear_stale_pidfile(data) and not pidfile.exists()
    # A live server of this data directory keeps its lock file.
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=data)
    try:
        pidfile.write_text(f"{server.pid}\n{data}\n")
        assert not postgres.clear_stale_pidfile(data) and pidfile.exists()
        pidfile.write_text("")  # being written this instant
        assert not postgres.clear_stale_pidfile(data) and pidfile.exists()
    finally:
        server.kill()
        server.wait()


def test_a_socket_lock_left_by_a_crash_is_cleared_only_when_its_postmaster_is_gone(tmp_path):
    """The crash case the down/up test met: `.s.PGSQL.5433.lock` naming a pid
    that is now another process made every later start fail."""
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    lock, sock = run / ".s.PGSQL.5433.lock", run / ".s.PGSQL.5433"
    lock.write_text(f"{os.getpid()}\n{data}\n")  # a pid alive, but not a postgres of this data directory
    sock.write_text("")
    assert postgres.clear_stale_socket_locks(run, data) == [".s.PGSQL.5433.lock"]
    assert not lock.exists() and not sock.exists()
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=data)
    try:
        lock.write_text(f"{server.pid}\n{data}\n")
        assert postgres.clear_stale_socket_locks(run, data) == [] and lock.exists()
    finally:
        server.kill()
        server.wait()
