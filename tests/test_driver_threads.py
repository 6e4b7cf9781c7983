"""Two threads on one host's driver at once (the agent's API observing beside a
reconcile), on real paramiko against an SSH host in the test process
(tests/sshfake.py); and the connection cache's borrow beside a reconcile's lease.

- concurrent requests each get their own channel and their own answer;
- a connection lost under both is reopened once, not once per thread, and
  both reads succeed on the new one;
- a borrowed connection is not closed by the idle timer while borrowed, nor
  when the reconcile that also held it releases it.
"""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.adapters.fleet import ConnectionCache
from reconciler.adapters.hosts import DockerHost
from reconciler.adapters.ssh import SSHAccess, connect
from reconciler.core.model import Environment, Host
from tests.sshfake import ENGINE_VERSION, FakeSSHHost


@pytest.fixture
def host(tmp_path):
    h = FakeSSHHost(tmp_path / "f1")
    yield h
    h.stop()


def access(h: FakeSSHHost) -> SSHAccess:
    return SSHAccess(host="f1", address="127.0.0.1", port=h.port, user="root",
                     identity_file=h.identity_file, known_hosts_file=h.known_hosts_file, timeout=3.0)


def driver(h: FakeSSHHost, events: list) -> DockerHost:
    a = access(h)
    return DockerHost("f1", connect(a), timeout=5.0, reconnect=lambda: connect(a),
                      log=lambda event, **f: events.append(event))


def in_threads(fn, n: int = 2, rounds: int = 20) -> list:
    """``fn()`` ``rounds`` times in each of ``n`` threads started together; every result or error."""
    out: list = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def work():
        start.wait()
        for _ in range(rounds):
            try:
                value = fn()
            except Exception as exc:  # collected: the test asserts there is none
                value = exc
            with lock:
                out.append(value)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_two_threads_reading_at_once_each_get_their_answer(host):
    events: list = []
    d = driver(host, events)
    try:
        results = in_threads(lambda: (d.observe().containers, d.ping()))
        assert results == [((), ENGINE_VERSION)] * 40
        assert host.connections == 1 and events == []
    finally:
        d.close()


def test_a_connection_lost_under_two_threads_is_reopened_once(host):
    events: list = []
    d = driver(host, events)
    try:
        d.ping()
        host.crash(silent=True)  # both threads' next requests fail on the dead connection...
        host.boot()
        results = in_threads(lambda: d.observe().containers, rounds=3)
        assert results == [()] * 6  # ...and are retried on the one new connection
        assert events.count("connection-reopened") == 1, events
        assert host.connections == 2
    finally:
        d.close()


def test_a_borrowed_connection_outlives_the_reconcile_that_shared_it_and_the_idle_timer(host, tmp_path):
    env = Environment("threads", (Host("f1", "127.0.0.1", "root", host.port),), ())
    cache = ConnectionCache(identity_file=host.identity_file, timeout=3.0, idle=0.2)
    try:
        leased = cache.open(env, host.known_hosts_file)  # a reconcile holds it
        with cache.borrow(env, host.known_hosts_file) as borrowed:
            assert borrowed["f1"] is leased["f1"]  # the kept connection, shared
            cache.release(leased)  # the reconcile ends
            time.sleep(0.6)  # past the idle time: still held by the borrow
            assert borrowed["f1"].conn.transport.is_active()
            assert borrowed["f1"].observe().containers == ()
        deadline = time.monotonic() + 10
        while borrowed["f1"].conn.transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not borrowed["f1"].conn.transport.is_active()  # closed once nobody holds it
        with cache.borrow(env, host.known_hosts_file) as again:  # none kept: opened, and kept
            assert again["f1"] is not borrowed["f1"] and again["f1"].ping() == ENGINE_VERSION
        assert host.connections == 2
    finally:
        cache.close_all()


def test_a_borrow_for_a_newer_commit_leaves_the_connections_a_reconcile_of_an_older_one_holds(host, tmp_path):
    env = Environment("threads", (Host("f1", "127.0.0.1", "root", host.port),), ())
    older = tmp_path / "known_hosts-older"
    older.write_text(open(host.known_hosts_file).read())
    newer = tmp_path / "known_hosts-newer"
    newer.write_text("# a comment: another pin file\n" + older.read_text())
    cache = ConnectionCache(identity_file=host.identity_file, timeout=3.0)
    try:
        held = cache.open(env, str(older))  # a reconcile of the older commit, deploying
        with cache.borrow(env, str(newer)) as borrowed:  # `plan` asks while the head has new pins
            assert borrowed["f1"] is not held["f1"] and borrowed["f1"].ping() == ENGINE_VERSION
            assert held["f1"].conn.transport.is_active() and held["f1"].observe().containers == ()
        assert held["f1"].conn.transport.is_active()
        cache.release(held)
    finally:
        cache.close_all()
