"""Environment locks: exclusive, stale ones recovered, freezes respected."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reconciler.errors import LockHeld
from reconciler.adapters.locks import Locks


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_owner_is_refused_and_told_who_holds_it(tmp_path):
    clock = Clock()
    Locks(tmp_path, clock=clock, pid=1, hostname="a").acquire("prod", "c" * 40)
    with pytest.raises(LockHeld, match=r"pid 1 on a \(commit cccccccccccc"):
        Locks(tmp_path, clock=clock, pid=2, hostname="b").acquire("prod", "d" * 40)


def test_the_lock_of_a_dead_agent_on_this_machine_is_taken_over(tmp_path):
    clock = Clock()
    here = Locks(tmp_path, clock=clock).hostname
    Locks(tmp_path, clock=clock, pid=dead_pid(), hostname=here).acquire("prod", "c1")
    mine = Locks(tmp_path, clock=clock)
    assert mine.acquire("prod", "c2").commit == "c2"


def test_a_lock_whose_heartbeat_stopped_is_stale(tmp_path):
    clock = Clock()
    other = Locks(tmp_path, clock=clock, pid=1, hostname="elsewhere", stale_after=60)
    other.acquire("prod", "c1")
    clock.now += 30
    other.heartbeat("prod")
    clock.now += 59
    with pytest.raises(LockHeld):
        Locks(tmp_path, clock=clock, pid=2, hostname="me").acquire("prod", "c2")
    clock.now += 2
    assert Locks(tmp_path, clock=clock, pid=2, hostname="me").acquire("prod", "c2").pid == 2
    # The old owner, coming back, must not overwrite its successor.
    other.heartbeat("prod")
    other.release("prod")
    assert Locks(tmp_path, clock=clock).holder("prod").pid == 2


def test_held_releases_and_beats(tmp_path):
    locks = Locks(tmp_path, heartbeat_interval=0.01)
    with locks.held("dev", "c1") as info:
        assert locks.holder("dev").commit == "c1"
        import time

        time.sleep(0.05)
        assert locks.holder("dev").heartbeat > info.heartbeat
    assert locks.holder("dev") is None


def test_a_freeze_blocks_reconciles_until_unfrozen(tmp_path):
    locks = Locks(tmp_path)
    locks.freeze("prod", "release freeze for the holidays", by="ops@x")
    with pytest.raises(LockHeld, match="frozen by ops@x.*holidays"):
        locks.acquire("prod", "c1")
    assert locks.frozen("prod").reason == "release freeze for the holidays"
    assert locks.unfreeze("prod").by == "ops@x"
    assert locks.frozen("prod") is None
    locks.acquire("prod", "c1")


def test_environments_lock_independently(tmp_path):
    Locks(tmp_path, pid=1, hostname="x").acquire("a", "c")
    Locks(tmp_path, pid=2, hostname="y").acquire("b", "c")
