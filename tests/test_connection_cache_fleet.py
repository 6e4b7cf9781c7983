"""The agent's connection cache on the real fleet: reuse, re-verify on a new
pin, reconnect after a lost connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import UnknownHostKey
from reconciler.adapters.fleet import ConnectionCache
from reconciler.core.model import Environment, Host

pytestmark = pytest.mark.fleet


def _env(fleet) -> Environment:
    return Environment("cachetest", tuple(Host(h.name, h.address, h.user, h.port) for h in fleet.hosts), ())


def test_connections_are_reused_until_the_pins_change_or_the_connection_dies(fleet, tmp_path):
    env = _env(fleet)
    pins = tmp_path / "known_hosts"
    pins.write_text(Path(fleet.known_hosts_file).read_text())
    cache = ConnectionCache(identity_file=fleet.identity_file)
    try:
        first = cache.open(env, str(pins))
        second = cache.open(env, str(pins))
        assert all(second[name] is first[name] for name in first)
        assert {name: len(d.observe().containers) >= 0 for name, d in second.items()} == {h.name: True for h in fleet.hosts}

        # The same keys with a comment added: a different pin file, so every
        # host is connected (and verified) afresh.
        pins.write_text("# rotated\n" + pins.read_text())
        third = cache.open(env, str(pins))
        assert all(third[name] is not first[name] for name in first)
        assert not any(d.conn.transport.is_active() for d in first.values())

        # A lost connection is replaced, not handed out dead.
        third["h1"].conn.close()
        fourth = cache.open(env, str(pins))
        assert fourth["h1"] is not third["h1"] and fourth["h2"] is third["h2"]
        assert fourth["h1"].ping()

        # Pins that do not match are refused even with connections cached.
        pins.write_text("")
        with pytest.raises(UnknownHostKey):
            cache.open(env, str(pins))
    finally:
        cache.close_all()


def test_connections_unused_for_the_idle_time_are_closed(fleet):
    import time

    env = _env(fleet)
    cache = ConnectionCache(identity_file=fleet.identity_file, idle=0.5)
    try:
        opened = cache.open(env, fleet.known_hosts_file)
        cache.release(opened)
        deadline = time.monotonic() + 10
        while any(d.conn.transport.is_active() for d in opened.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(d.conn.transport.is_active() for d in opened.values())
        again = cache.open(env, fleet.known_hosts_file)  # opened afresh, and working
        assert all(again[name] is not opened[name] for name in opened)
        assert all(d.ping() for d in again.values())
    finally:
        cache.close_all()
