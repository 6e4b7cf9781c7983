"""Connections that heal, on real paramiko against an SSH host in the test
process (``tests/sshfake.py``) whose network and engine fail on command.

What the trial with the agent showed, each reproduced here first:

- dockerd closes an engine connection idle for 300 s (dial-stdio exits, the
  channel closes), and docker-py's pool handed the closed channel out again:
  ``('Connection aborted.', OSError('Socket is closed'))`` on every first
  drift check;
- a host that went down and came back left cached connections that looked
  alive and failed on first use, until the agent was restarted;
- a host without an SFTP subsystem gave only ``SSHException: Channel closed.``
  when a secret file was read;
- paramiko's own log records were printed raw between the agent's JSON lines.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.adapters import fleet, liblog
from reconciler.adapters.hosts import DockerHost
from reconciler.adapters.ssh import SSHAccess, connect
from reconciler.core.model import Environment, Host, ImageRef
from reconciler.errors import EngineError, HostUnreachable, SecretUnreadable
from tests.pushing import wait_for
from tests.sshfake import ENGINE_VERSION, FakeSSHHost

ROOT = Path(__file__).resolve().parents[1]


# In-process hosts answer at once: look often.
wait_until = functools.partial(wait_for, timeout=20.0, every=0.02)


@pytest.fixture
def host(tmp_path):
    h = FakeSSHHost(tmp_path / "f1")
    yield h
    h.stop()


@pytest.fixture
def bare_host(tmp_path):
    """A host whose sshd offers no SFTP subsystem, as some hardened hosts."""
    h = FakeSSHHost(tmp_path / "f1", sftp=False)
    yield h
    h.stop()


def access(h: FakeSSHHost, timeout: float = 3.0) -> SSHAccess:
    return SSHAccess(host="f1", address="127.0.0.1", port=h.port, user="root",
                     identity_file=h.identity_file, known_hosts_file=h.known_hosts_file, timeout=timeout)


def driver(h: FakeSSHHost, events: list | None = None) -> DockerHost:
    a = access(h)
    log = (lambda event, **f: events.append((event, f))) if events is not None else None
    return DockerHost("f1", connect(a), timeout=5.0, reconnect=lambda: connect(a), log=log)


def transport_dead(d: DockerHost) -> bool:
    return not d.conn.transport.is_active()


def no_open_channels(d: DockerHost) -> bool:
    # The client has processed the host's close of every channel.
    return all(c.closed for c in list(d.conn.transport._channels.values()))


# ---------------------------------------------------------------- the engine closes idle connections

def test_an_engine_connection_closed_by_the_host_while_idle_is_not_handed_out_again(host):
    d = driver(host)
    try:
        assert d.ping() == ENGINE_VERSION
        assert host.close_idle_engine_connections() == 1  # what dockerd does after 300 s idle
        assert wait_until(lambda: no_open_channels(d))
        # check() never retries: it passes only if the pool skipped the dead channel.
        d.check(timeout=3.0)
        assert d.observe().containers == ()
        assert host.engine_channels == 2 and host.connections == 1  # a new channel, the same SSH connection
    finally:
        d.close()


# ---------------------------------------------------------------- a lost connection, mid-run

def test_a_connection_known_to_be_lost_is_reopened_before_the_next_call(host):
    d = driver(host)
    try:
        d.ping()
        host.crash()  # a reset: the client's transport dies at once
        host.boot()
        assert wait_until(lambda: transport_dead(d))
        d.start("c0ffee")  # a change, but nothing was sent on the dead connection: reopened first
        assert ("POST", "/v1.41/containers/c0ffee/start") in host.requests
        assert host.connections == 2
    finally:
        d.close()


def test_a_change_on_a_silently_dead_connection_fails_naming_host_and_operation_then_heals(host):
    events: list = []
    d = driver(host, events)
    try:
        d.ping()
        host.crash(silent=True)  # the client hears nothing...
        host.boot()  # ...until the host, back, resets its next packet
        with pytest.raises(HostUnreachable) as failed:
            d.start("c0ffee")  # not retried: a change may or may not have happened
        assert str(failed.value).startswith("f1: start c0ffee")
        assert failed.value.kind == "transient"
        assert ("POST", "/v1.41/containers/c0ffee/start") not in host.requests
        d.start("c0ffee")  # the next call reopens the connection first
        assert host.requests.count(("POST", "/v1.41/containers/c0ffee/start")) == 1
        assert [e for e, _ in events] == ["connection-lost", "connection-reopened"]
        assert events[0][1]["host"] == "f1" and events[0][1]["operation"] == "start c0ffee"
    finally:
        d.close()


def test_a_read_on_a_silently_dead_connection_is_retried_once_on_a_new_one(host):
    d = driver(host)
    try:
        d.ping()
        host.crash(silent=True)
        host.boot()
        assert d.observe().containers == ()
        assert host.connections == 2
    finally:
        d.close()


def test_a_host_that_stays_down_is_host_unreachable_naming_the_host_and_operation(host):
    d = driver(host)
    try:
        d.ping()
        host.crash()
        with pytest.raises(HostUnreachable) as failed:
            d.observe()
        assert str(failed.value).startswith("f1: list containers")
        assert "127.0.0.1" in str(failed.value)  # the reconnect that was tried
    finally:
        d.close()


def test_the_attribute_error_of_a_transport_that_died_under_a_channel_open_is_host_unreachable(host, monkeypatch):
    a = access(host)
    d = DockerHost("f1", connect(a), timeout=5.0)  # no way to reconnect: the error must still be ours
    try:
        d.ping()
        host.close_idle_engine_connections()
        assert wait_until(lambda: no_open_channels(d))
        transport = d.conn.transport

        def dies(*args, **kwargs):
            transport.close()
            raise AttributeError("'NoneType' object has no attribute 'settimeout'")

        monkeypatch.setattr(transport, "open_channel", dies)
        with pytest.raises(HostUnreachable) as failed:
            d.check(timeout=3.0)
        assert str(failed.value).startswith("f1: engine version")
        assert "settimeout" in str(failed.value)
    finally:
        d.close()


def test_an_attribute_error_on_a_live_connection_is_a_bug_not_a_verdict(host, monkeypatch):
    d = driver(host)
    try:
        d.ping()

        def broken():
            raise AttributeError("a bug in our code")

        with pytest.raises(AttributeError):
            d.over_ssh("a step", broken)
    finally:
        d.close()


def test_the_engines_error_answers_are_engine_errors_not_a_lost_connection(host):
    events: list = []
    d = driver(host, events)
    try:
        assert d.has_image(ImageRef("registry.example/app", "v1")) is False  # a 404: no such image
        with pytest.raises(EngineError) as failed:
            d.inspect("broken")  # a 500
        assert str(failed.value).startswith("f1: inspect broken: the engine failed")
        assert events == [] and host.connections == 1
    finally:
        d.close()


# ---------------------------------------------------------------- secret files

def test_a_secret_file_is_read_over_sftp(host):
    host.files["/etc/app/token"] = b"s3cret\n"
    d = driver(host)
    try:
        assert d.read_secret_file("/etc/app/token") == "s3cret"
        assert host.sftp_sessions == 1 and not any(e.startswith("cat") for e in host.execs)
    finally:
        d.close()


def test_a_host_without_sftp_is_read_through_an_exec_channel(bare_host):
    bare_host.files["/etc/app/token"] = b"s3cret\n"
    d = driver(bare_host)
    try:
        assert d.read_secret_file("/etc/app/token") == "s3cret"
        assert bare_host.execs[-1] == "cat -- /etc/app/token"
        assert d.ping() == ENGINE_VERSION  # the refused subsystem left the connection working
    finally:
        d.close()


def test_a_missing_secret_file_names_host_file_method_and_the_way_out(host):
    d = driver(host)
    try:
        with pytest.raises(SecretUnreadable) as failed:
            d.read_secret_file("/etc/app/missing")
        text = str(failed.value)
        assert text.startswith("f1: read secret file /etc/app/missing over SFTP")
        assert "create" in text and "secrets" in text
        assert failed.value.kind == "stalled"
    finally:
        d.close()


def test_a_missing_secret_file_on_a_host_without_sftp_says_both_ways_were_tried(bare_host):
    d = driver(bare_host)
    try:
        with pytest.raises(SecretUnreadable) as failed:
            d.read_secret_file("/etc/app/missing")
        text = str(failed.value)
        assert text.startswith("f1: read secret file /etc/app/missing")
        assert "no SFTP subsystem" in text and "cat" in text and "No such file or directory" in text
        assert "Subsystem sftp" in text  # the other way out
    finally:
        d.close()


def test_a_secret_read_after_the_host_came_back_reconnects(host):
    host.files["/etc/app/token"] = b"s3cret"
    d = driver(host)
    try:
        assert d.read_secret_file("/etc/app/token") == "s3cret"
        host.crash(silent=True)
        host.boot()
        assert d.read_secret_file("/etc/app/token") == "s3cret"
        assert host.connections == 2
    finally:
        d.close()


# ---------------------------------------------------------------- the agent's connection cache

def _env(h: FakeSSHHost) -> Environment:
    return Environment("heal", (Host("f1", "127.0.0.1", "root", h.port),), ())


def test_a_cached_connection_that_fails_its_check_is_evicted_and_reopened_once(host):
    events: list = []
    cache = fleet.ConnectionCache(identity_file=host.identity_file, timeout=3.0,
                                  log=lambda event, **f: events.append((event, f)))
    try:
        first = cache.open(_env(host), host.known_hosts_file)["f1"]
        cache.release({"f1": first})
        host.crash(silent=True)  # down and back while the agent was idle
        host.boot()
        second = cache.open(_env(host), host.known_hosts_file)["f1"]
        assert second.observe().containers == ()
        assert host.connections == 2
        evicted = [f for e, f in events if e == "connection-evicted"]
        assert len(evicted) == 1 and evicted[0]["host"] == "f1" and evicted[0]["environment"] == "heal"
    finally:
        cache.close_all()


def test_a_cached_connection_whose_host_stays_down_counts_as_unreachable_after_one_reconnect(host):
    cache = fleet.ConnectionCache(identity_file=host.identity_file, timeout=3.0)
    try:
        cache.release(cache.open(_env(host), host.known_hosts_file))
        host.crash(silent=True)
        with pytest.raises(HostUnreachable) as failed:
            cache.open(_env(host), host.known_hosts_file)
        assert str(failed.value).startswith("f1: ")
        host.boot()
        assert cache.open(_env(host), host.known_hosts_file)["f1"].ping() == ENGINE_VERSION
    finally:
        cache.close_all()


def test_the_idle_timer_never_closes_a_connection_in_use(host):
    cache = fleet.ConnectionCache(identity_file=host.identity_file, timeout=3.0, idle=0.2)
    try:
        cache.release(cache.open(_env(host), host.known_hosts_file))  # starts the idle timer
        in_use = cache.open(_env(host), host.known_hosts_file)
        time.sleep(0.8)  # the idle time passes (what is under test), while a long reconcile runs
        assert in_use["f1"].ping() == ENGINE_VERSION and host.connections == 1
        cache.release(in_use)
        assert wait_until(lambda: transport_dead(in_use["f1"]))
    finally:
        cache.close_all()


# ---------------------------------------------------------------- library logs

def test_library_log_records_become_the_agents_structured_lines(capfd):
    events: list = []
    undo = liblog.route_library_logs(lambda event, **f: events.append((event, f)))
    try:
        logging.getLogger("paramiko.transport.h2").error("Socket exception: Connection reset by peer (104)")
        logging.getLogger("urllib3.connectionpool").warning("Connection pool is full, discarding connection: localhost")
        logging.getLogger("paramiko.transport").debug("below the level: dropped")
        logging.getLogger("invoke").info("below the level: dropped")
    finally:
        undo()
    assert events == [
        ("library-log", {"host": "h2", "logger": "paramiko.transport", "level": "error",
                         "message": "Socket exception: Connection reset by peer (104)"}),
        ("library-log", {"logger": "urllib3.connectionpool", "level": "warning",
                         "message": "Connection pool is full, discarding connection: localhost"}),
    ]
    assert capfd.readouterr().err == ""


AGENT_LIKE = """
import sys, threading, time, warnings
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from reconciler.agent.loop import make_logger
from reconciler.adapters import liblog
from reconciler.adapters.hosts import DockerHost
from reconciler.adapters.ssh import SSHAccess, connect
from tests.sshfake import FakeSSHHost

log = make_logger("json")
liblog.route_library_logs(log)
host = FakeSSHHost(Path(sys.argv[2]))
a = SSHAccess(host="f1", address="127.0.0.1", port=host.port, user="root", identity_file=host.identity_file,
              known_hosts_file=host.known_hosts_file, timeout=3.0)
d = DockerHost("f1", connect(a), timeout=5.0)
d.ping()
host.crash()  # paramiko's transport thread logs the reset at ERROR
deadline = time.monotonic() + 20
while d.conn.transport.is_active() and time.monotonic() < deadline:
    time.sleep(0.02)
warnings.warn("a library's deprecation warning")
t = threading.Thread(target=lambda: 1 / 0, name="a-library-thread")
t.start(); t.join()
log("done")
"""


def test_an_agent_routing_library_logs_writes_json_lines_only(tmp_path):
    proc = subprocess.run([sys.executable, "-c", AGENT_LIKE, str(ROOT), str(tmp_path / "f1")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = proc.stderr.splitlines()
    raw = [line for line in lines if not line.startswith("{")]
    assert raw == [], proc.stderr
    records = [json.loads(line) for line in lines]
    assert records[-1]["event"] == "done", proc.stderr
    library = [r for r in records if r["event"] == "library-log"]
    assert any(r.get("host") == "f1" and "Connection reset by peer" in r["message"] for r in library), proc.stderr
    assert any(r["logger"] == "py.warnings" and "deprecation warning" in r["message"] for r in library), proc.stderr
    crashed = [r for r in records if r["event"] == "thread-crashed"]
    assert crashed and crashed[0]["thread"] == "a-library-thread" and "ZeroDivisionError" in crashed[0]["error"]
