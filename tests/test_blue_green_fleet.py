"""Blue-green through each sandbox host's real HAProxy, driven as a user drives it.

The agent (`reconciler run`) runs as its own process on a bare repository
with the hooks installed; every change is a real `git push`, the rollback
lever is `reconciler rollback` run from a shell.  While each of these runs,
a bounded load generator (10 requests a second per host, a fresh connection
each, only to the sandbox hosts' addresses through their router's port 80)
checks that no request fails, that none is answered by the never-healthy
release, and that each host answers the old version before its switch
and the new one after it: the switch's moments come from the agent's
journal (``begin``/``done`` of ``SetWeights`` per host).

(a) a deploy v1 -> v2; (b) a deploy of v3-unhealthy, rolled back and
reverted; (c) `reconciler rollback` from a shell; (d) the agent killed
with SIGKILL in the middle of a switch, then started again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import gitlog
from tests.agentproc import AgentProcess, lever, push_on_top, user_repos
from tests.bgfleet import JournalWatcher, Load, exposed_web, one_request, write_environment
from tests.envrepo import remove_containers
from tests.pushing import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "bgfleet"  # every container this module creates is bgfleet-*
HOSTNAME = "web.bgfleet.test"


class World:
    def __init__(self, fleet, root: Path) -> None:
        self.fleet = fleet
        self.work, self.bare = user_repos(root, fleet.known_hosts_file, ENV)
        self.state = root / "state"
        self.agent = AgentProcess(self.bare, ENV, fleet.identity_file, root / "agent.log", state=self.state)
        self.addresses = {h.name: h.address for h in fleet.hosts}

    # ------------------------------------------------------------ the user's side
    def push(self, tag: str, message: str) -> str:
        return push_on_top(self.work, self.bare, lambda: write_environment(
            self.work, ENV, self.fleet, exposed_web(self.fleet.images[tag], HOSTNAME), message=message))

    def results(self, commit: str) -> list[str]:
        return [a.result for a in gitlog.attempts(pygit2.Repository(str(self.bare)), commit, ENV)]

    def head(self) -> str:
        return gitlog.branch_head(pygit2.Repository(str(self.bare)), "refs/heads/main")

    def answers(self) -> dict[str, tuple[int | None, str]]:
        return {name: one_request(address, HOSTNAME) for name, address in self.addresses.items()}

    def serving(self, version: str) -> bool:
        return self.answers() == {name: (200, f"demo-web {version}") for name in self.addresses}

    def agent_log(self) -> str:
        return self.agent.text()

    # ------------------------------------------------------------ clean-up
    def close(self) -> None:
        self.agent.stop()
        remove_containers(self.fleet, f"{ENV}-")
        from reconciler.adapters.router import Router
        from reconciler.adapters.ssh import connect
        from reconciler.core import router as rt

        for h in self.fleet.hosts:  # the router back as the sandbox made it: no backend
            conn = connect(h.ssh_access())
            try:
                Router(conn, h.router_access(), rt.Site(h.router.settings())).configure()
            finally:
                conn.close()


@pytest.fixture(scope="module")
def world(fleet, tmp_path_factory):
    w = World(fleet, tmp_path_factory.mktemp("bluegreen"))
    remove_containers(fleet, f"{ENV}-")  # a previous session's leftovers
    try:
        first = w.push("v1", "web v1 behind the router")
        w.agent.start()
        assert wait_for(lambda: "deployed" in w.results(first), timeout=180), w.agent_log()
        assert wait_for(lambda: w.serving("v1")), w.answers()
        yield w
    finally:
        w.close()


def switch_windows(watcher: JournalWatcher, hosts) -> dict[str, tuple[float, float]]:
    """Per host, from the start of its last ``SetWeights`` to its end (or the next record after it on that host)."""
    windows = {}
    for host in hosts:
        begun = sorted(r["at"] for r in watcher.seen("begin", "SetWeights", host))
        assert begun, f"{host}: no switch in the journal"
        later = sorted(r["at"] for r in watcher.records.values() if r.get("host") == host and r["at"] > begun[-1])
        windows[host] = (begun[-1], later[0] if later else time.time())
    return windows


def expect_switch(load: Load, windows: dict[str, tuple[float, float]], old: str, new: str) -> None:
    """0 failures; before a host's switch its old version answers, after it the new one."""
    failures = load.failures()
    assert failures == [], f"{len(failures)} failed requests of {len(load.answers)}, first: {failures[:3]}"
    for host, (before, after) in windows.items():
        mine = [a for a in load.answers if a.host == host]
        early = [a.body for a in mine if a.started < before]
        late = [a.body for a in mine if a.started > after]
        assert set(early) == {f"demo-web {old}"} and len(early) >= 5, (host, early[-5:])
        assert set(late) == {f"demo-web {new}"} and len(late) >= 5, (host, late[:5])
        assert {a.body for a in mine} <= {f"demo-web {old}", f"demo-web {new}"}, host
        print(f"{host}: {len(mine)} requests, {len(early)} before its switch, {len(late)} after; "
              f"switch {after - before:.3f}s")


def test_a_deploy_under_load_loses_no_request(world, fleet):
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME) as load:
        commit = world.push("v2", "web v2")
        assert wait_for(lambda: "deployed" in world.results(commit), timeout=180), world.agent_log()
    watcher.stop()
    expect_switch(load, switch_windows(watcher, world.addresses), "v1", "v2")
    # Blue was drained and taken out before it stopped: every host's router has green only.
    assert [r["step"] for r in sorted(watcher.records.values(), key=lambda r: r["at"])
            if r.get("host") == "h1" and r.get("event") == "done"][-6:] == [
        "SetWeights", "Drain", "WaitDrained", "Maint", "DelServer", "Switch"]


def test_a_never_healthy_release_gets_no_request_and_is_reverted(world, fleet):
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME) as load:
        bad = world.push("v3-unhealthy", "web v3, never healthy")
        assert wait_for(lambda: "rolled-back" in world.results(bad), timeout=180), world.agent_log()
        assert wait_for(lambda: world.head() != bad), "no revert commit"
    watcher.stop()
    assert load.failures() == [], load.failures()[:3]
    bodies = {a.body for a in load.answers}
    assert bodies == {"demo-web v2"}, bodies  # not one request reached v3
    assert len(load.answers) >= 3 * 100
    assert watcher.seen("failed", "WaitUp", "h1") and not watcher.seen("begin", "SetWeights")
    assert f"This reverts commit {bad}" in pygit2.Repository(str(world.bare))[world.head()].message


def test_the_rollback_lever_from_a_shell_switches_back_under_load(world, fleet):
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME) as load:
        done = lever(world.bare, ENV, fleet.identity_file, "rollback")
        assert done.returncode == 0, done.stdout + done.stderr
    watcher.stop()
    expect_switch(load, switch_windows(watcher, world.addresses), "v2", "v1")
    head = world.head()
    assert pygit2.Repository(str(world.bare))[head].message.startswith(f"Roll back {ENV} to ")
    time.sleep(5)  # the agent sees the lever's commit: in sync, it does not undo the rollback
    assert world.serving("v1")


@pytest.mark.parametrize("tag, kill_after", [("v2", ("begin", "WaitUp", "h2")), ("v1", ("done", "SetWeights", "h1"))])
def test_the_agent_killed_mid_switch_continues_after_a_restart_under_load(world, fleet, tag, kill_after):
    old = "v1" if tag == "v2" else "v2"
    assert world.serving(old)
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME) as load:
        commit = world.push(tag, f"web {tag}, the agent dies mid-switch")
        assert wait_for(lambda: watcher.seen(*kill_after), timeout=120, every=0.02), world.agent_log()[-3000:]
        world.agent.kill()
        watcher.poll()  # the dead run's last records, before the new run's journal replaces them
        killed_run = {r["run_id"] for r in watcher.seen(*kill_after)}
        assert not any(r.get("step") == "Switch" and r["event"] == "done" and r.get("host") == kill_after[2]
                       for r in watcher.records.values() if r["run_id"] in killed_run), "killed too late"
        time.sleep(1.0)
        world.agent.start()
        assert wait_for(lambda: "deployed" in world.results(commit), timeout=180), world.agent_log()[-3000:]
    watcher.stop()
    expect_switch(load, switch_windows(watcher, world.addresses), old, tag)
    # The restarted run adopted the interrupted switch's candidate instead of starting another.
    runs = {r["run_id"] for r in watcher.records.values()}
    assert len(runs) >= 2
    resumed = [r for r in watcher.records.values() if r["run_id"] not in killed_run and r.get("host") == kill_after[2]]
    assert "Adopt" in {r.get("step") for r in resumed}, sorted({r.get("step") for r in resumed})
    assert "Start" not in {r.get("step") for r in resumed}
    assert world.agent.events("recover"), "the restarted agent did not recover the journal"
