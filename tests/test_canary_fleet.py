"""Canary rollouts and the watch after the switch, on the real fleet, driven as a user drives them.

The agent (`reconciler run`) runs as its own process on a bare repository
with the hooks installed; every change is a real `git push`.  Each sandbox
host gets a private HAProxy of this module's (``tests.ownrouter``: the
shared one on port 80 belongs to every helper's tests), reached by the
product over the host's SSH connection like any router.  While each push
is deployed, bounded load generators (``tests.loadgen``; only the hosts'
addresses) send public requests, sticky clients (a browser's cookie jar,
a new session every few requests) and QA requests (header ``X-Canary``).
The moments of each step come from the agent's journal.

(a) a canary v1 -> v2 to 100 %: 0 failed requests, 0 answered by an
unhealthy container, every answer by a version expected at its moment; the
green share per step follows the weights; a sticky session stays on one
version; QA requests reach green from the first step while public traffic
does not before its weight is raised.  On the way, every host's router is
reloaded during the 10 % pause (it keeps its weights), and the agent is
killed with SIGKILL during the 50 % pause: the restarted agent goes on from
50 % (never a step back) and holds only what was left of that pause.
(b) a canary of a release that fails 30 % of its requests (the router's own
error counters): aborted at its first public step, every host back on blue
with 0 failed requests after the switch back, recorded rolled-back in git
and reverted; a client holding the failing release's sticky cookie is
answered by blue from the moment of the abort (the release in ``maint``:
``drain`` would still honour its cookie).
(c) the watch after the switch: a release whose check fails 20 s after it
starts is switched back on every host by the watch, and recorded so; blue,
kept running as the router's standby, answers from the moment the release
goes DOWN: 0 failed requests.
(d) the agent killed with SIGKILL mid-watch: the restarted agent watches
what is left of the window (from its recorded start), then records the deploy.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.adapters.router import _parse
from reconciler.sandbox import error_image
from tests import ownrouter
from tests.agentproc import AgentProcess, push_on_top, user_repos
from tests.bgfleet import JournalWatcher, exposed_web, write_environment
from tests.envrepo import remove_containers
from tests.loadgen import Answer, Load, fetch, one_request
from tests.pushing import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "canary"  # every container this module creates is canary-*
HOSTNAME = "web.canary.test"
PORT, ADMIN_PORT = 18480, 19480  # this module's routers: frontend and Runtime API on every host
PAUSE = 8  # seconds per canary step
RATE = 20.0


def service(image: str, *, rollout: str, env: str = "") -> str:
    return exposed_web(image, HOSTNAME, drain="5s", deadline="30s", rollout=rollout, more=env)


CANARY = (f"{{strategy: canary, steps: [0, 10, 50, 100], pause: {PAUSE}s, abort: {{errors: 1%}}, "
          "qa: {header: X-Canary}}")


class World:
    def __init__(self, fleet, root: Path, routers: ownrouter.PrivateRouters) -> None:
        self.fleet, self.routers = fleet, routers
        self.work, self.bare = user_repos(root, fleet.known_hosts_file, ENV)
        self.state = root / "state"
        self.agent = AgentProcess(self.bare, ENV, fleet.identity_file, root / "agent.log", state=self.state)
        self.addresses = {h.name: h.address for h in fleet.hosts}

    def push(self, services: str, message: str) -> str:
        return push_on_top(self.work, self.bare, lambda: write_environment(  # the agent commits too (reverts)
            self.work, ENV, self.fleet, services, message=message, router=self.routers.block()))

    def attempts(self, commit: str):
        return gitlog.attempts(pygit2.Repository(str(self.bare)), commit, ENV)

    def results(self, commit: str) -> list[str]:
        return [a.result for a in self.attempts(commit)]

    def head(self) -> str:
        return gitlog.branch_head(pygit2.Repository(str(self.bare)), "refs/heads/main")

    def answers(self) -> dict:
        return {name: one_request(address, HOSTNAME, PORT) for name, address in self.addresses.items()}

    def serving(self, version: str) -> bool:
        return self.answers() == {name: (200, f"demo-web {version}") for name in self.addresses}

    def load(self, **kw) -> Load:
        return Load(self.addresses, HOSTNAME, port=PORT, **{"rate": RATE, "max_requests": 3000, "max_seconds": 150.0, **kw})

    def ensure(self, tag: str) -> None:
        """``tag`` serving on every host (a quick blue-green push when it is not): tests run alone too."""
        if not self.serving(tag):
            commit = self.push(service(self.fleet.images[tag], rollout="{batch_size: 3}"), f"web {tag} for the next test")
            assert wait_for(lambda: "deployed" in self.results(commit), timeout=240), self.agent_log()
        assert wait_for(lambda: self.serving(tag)), self.answers()

    def agent_log(self) -> str:
        return self.agent.text(4000)


@pytest.fixture(scope="module")
def world(fleet, tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    remove_containers(fleet, f"{ENV}-")
    routers = ownrouter.PrivateRouters(fleet, PORT, ADMIN_PORT).start()
    w = World(fleet, root, routers)
    try:
        first = w.push(service(fleet.images["v1"], rollout=CANARY), "web v1, canary rollouts")
        w.agent.start()
        assert wait_for(lambda: "deployed" in w.results(first), timeout=240), w.agent_log()
        assert wait_for(lambda: w.serving("v1")), w.answers()
        yield w
    finally:
        w.agent.stop()
        remove_containers(fleet, f"{ENV}-")
        routers.stop()


class CookieHolder:
    """Per host: fresh sessions until one is answered by a release whose body starts with ``prefix``,
    then that release's sticky cookie on every request, kept whatever the router sets after."""

    def __init__(self, addresses: dict[str, str], prefix: str, rate: float = 20.0, max_seconds: float = 150.0) -> None:
        self.addresses, self.prefix, self.rate, self.max_seconds = addresses, prefix, rate, max_seconds
        self.answers: list[Answer] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=item, daemon=True) for item in addresses.items()]

    def _run(self, host: str, address: str) -> None:
        start, cookie = time.monotonic(), ""
        for i in range(int(self.rate * self.max_seconds)):
            if self.stopping.is_set():
                return
            time.sleep(max(0.0, start + i / self.rate - time.monotonic()))
            began = time.time()
            status, body, set_cookie = fetch(address, HOSTNAME, PORT, cookie=cookie)
            self.answers.append(Answer(host, began, time.time(), status, body, cookie))
            if not cookie and body.startswith(self.prefix) and set_cookie:
                cookie = set_cookie.split(";", 1)[0]

    def __enter__(self) -> "CookieHolder":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=30)


def _pauses(watcher: JournalWatcher, weight: int) -> list[dict]:
    return [r for r in watcher.records.values() if r.get("event") == "canary-pause" and r.get("weight") == weight]


def _done(watcher: JournalWatcher, step: str, host: str, reason: str) -> float:
    times = [r["at"] for r in watcher.seen("done", step, host) if r.get("reason", "").startswith(reason)]
    assert times, f"{host}: no {step} '{reason}...' in the journal"
    return times[-1]


def _begun(watcher: JournalWatcher, step: str, host: str, reason: str) -> float:
    times = [r["at"] for r in watcher.seen("begin", step, host) if r.get("reason", "").startswith(reason)]
    assert times, f"{host}: no {step} '{reason}...' begun in the journal"
    return times[-1]


def _restored(watcher: JournalWatcher, host: str) -> float:
    """When the rollback had ``host`` switched back (the journal's ``restored``, after the router's switch)."""
    times = [r["at"] for r in watcher.records.values() if r.get("event") == "restored" and r.get("host") == host]
    assert times, f"{host}: not restored in the journal"
    return max(times)


def _admin(world, host: str, line: str) -> str:
    """One Runtime API line on ``host``'s router, through its unix admin socket (the test's own way in)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(str(world.routers.root / host / "admin.sock"))
        s.sendall((line + "\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def _worker(world, host: str) -> str | None:
    try:
        return next((line for line in _admin(world, host, "show info").splitlines() if line.startswith("Pid:")), None)
    except OSError:
        return None


def _weights(world, host: str, backend: str) -> dict[str, int]:
    servers = _parse(_admin(world, host, "show servers state; show stat -1 4 -1; show backend"))[0]
    return {name: s.weight for (b, name), s in servers.items() if b == backend}


def _reload_routers(world) -> None:
    """Every host's router reloaded (its master signalled, as the router's reload command does); the new workers up."""
    before = {h: _worker(world, h) for h in world.addresses}
    for host in world.addresses:
        os.kill(world.routers.pids[host], signal.SIGUSR2)
    for host in world.addresses:
        assert wait_for(lambda: _worker(world, host) not in (None, before[host]), timeout=60), host


def _weight_done(watcher: JournalWatcher, reason: str, hosts) -> bool:
    return all(any(r.get("reason", "").startswith(reason) for r in watcher.seen("done", "SetWeights", h)) for h in hosts)


def test_a_canary_to_100_percent_under_load_follows_the_weights_and_loses_no_request(world):
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    public, sticky, qa = world.load(), world.load(rate=5.0, sticky=True, session_requests=15), \
        world.load(rate=5.0, headers={"X-Canary": "1"})
    with public, sticky, qa:
        commit = world.push(service(world.fleet.images["v2"], rollout=CANARY), "web v2 as a canary")
        # During the 10 % pause: every router reloaded; it keeps the canary's weights.
        assert wait_for(lambda: _weight_done(watcher, "canary: 10%", world.addresses), timeout=240, every=0.1), world.agent_log()
        _reload_routers(world)
        green = next(r["server"] for r in watcher.records.values() if r.get("event") == "canary-pause")
        reloaded = {h: _weights(world, h, "web") for h in world.addresses}
        # During the 50 % pause: the agent killed, then started again.
        assert wait_for(lambda: _weight_done(watcher, "canary: 50%", world.addresses) and len(_pauses(watcher, 50)) == 3,
                        timeout=240, every=0.1), world.agent_log()
        time.sleep(2)
        world.agent.kill()
        killed = time.time()
        watcher.poll()
        world.agent.start()
        assert wait_for(lambda: "deployed" in world.results(commit), timeout=240), world.agent_log()
    watcher.stop()
    for host, weights in reloaded.items():
        assert weights[green] == 10 and set(weights.values()) == {10, 90}, (host, weights)
    # The restarted agent went on from 50 %: no weight step begun again, the pause at 50 held
    # from the dead run's start (what was left of it), then the switch.
    again = [r for r in watcher.records.values() if r.get("at", 0) > killed and r.get("event") == "begin"
             and r.get("step") == "SetWeights" and r.get("reason", "").startswith("canary")]
    assert again == [], again
    first = {r["host"]: r["since"] for r in _pauses(watcher, 50) if r["at"] < killed}
    resumed = {r["host"]: r["since"] for r in _pauses(watcher, 50) if r["at"] > killed}
    assert resumed == first and set(first) == set(world.addresses), (first, resumed)
    everything = public.answers + sticky.answers + qa.answers
    failed = [a for a in everything if a.status != 200]
    assert failed == [], f"{len(failed)} failed of {len(everything)}: {failed[:3]}"
    assert {a.body for a in everything} == {"demo-web v1", "demo-web v2"}  # nothing else answered
    v2 = "demo-web v2"
    shares = {}
    for host in world.addresses:
        mine = [a for a in public.answers if a.host == host]
        qa_on = _done(watcher, "SetWeights", host, "QA requests")
        ten = _begun(watcher, "SetWeights", host, "canary: 10%")
        ten_on, fifty = _done(watcher, "SetWeights", host, "canary: 10%"), _begun(watcher, "SetWeights", host, "canary: 50%")
        fifty_on, full = _done(watcher, "SetWeights", host, "canary: 50%"), _begun(watcher, "SetWeights", host, "switch")
        full_on = _done(watcher, "SetWeights", host, "switch")
        # Before the public weight is raised, no public request reaches green; QA ones all do.
        assert {a.body for a in mine if a.ended < ten} == {"demo-web v1"}, host
        qa_early = [a.body for a in qa.answers if a.host == host and qa_on < a.started and a.ended < ten]
        assert qa_early and set(qa_early) == {v2}, (host, qa_early)
        for name, (start, end) in {"10": (ten_on, fifty), "50": (fifty_on, full)}.items():
            window = [a for a in mine if start < a.started and a.ended < end]
            shares.setdefault(name, []).extend(a.body == v2 for a in window)
        assert {a.body for a in mine if a.started > full_on} == {v2}, host
    ten_share = sum(shares["10"]) / len(shares["10"])
    fifty_share = sum(shares["50"]) / len(shares["50"])
    print(f"green share: {ten_share:.2f} of {len(shares['10'])} at 10 %, {fifty_share:.2f} of {len(shares['50'])} at 50 %")
    assert 0.02 <= ten_share <= 0.25 and 0.35 <= fifty_share <= 0.65, (ten_share, fifty_share)
    # A sticky session stays on the version it got; one that got green kept it.
    sessions: dict[tuple[str, int], list] = {}
    for a in sorted(sticky.answers, key=lambda a: a.started):
        sessions.setdefault((a.host, a.session), []).append(a)
    full_at = {host: _begun(watcher, "SetWeights", host, "switch") for host in world.addresses}
    green_early = [k for k, v in sessions.items() if v[0].body == v2 and v[0].started < full_at[k[0]] and len(v) > 3]
    assert green_early, "no sticky session got green during the canary"
    changed = {}
    for key, answers in sessions.items():
        bodies = [a.body for a in answers]
        if bodies[0] == v2:
            assert set(bodies) == {v2}, (key, bodies)  # a session that got green kept green
        elif len(set(bodies)) > 1:  # one that got blue moves once, when blue is taken out at 100 %
            changed[key] = bodies
            first_v2 = bodies.index(v2)
            assert set(bodies[first_v2:]) == {v2} and answers[first_v2].ended > full_at[key[0]], (key, bodies)
    print(f"sticky: {len(sessions)} sessions, {len(green_early)} got green during the canary, "
          f"{len(changed)} moved from blue when it was taken out")


def test_a_canary_with_errors_is_aborted_to_blue_and_reverted(world):
    world.ensure("v2")
    errors = error_image.push(world.fleet.registry, "demo/web")
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    # A count rule (more than 5 errors) gives the cookie holders a moment to get v6's cookie.
    rollout = CANARY.replace("{errors: 1%}", "{errors: 5}")
    with world.load() as load, CookieHolder(world.addresses, "demo-web v6") as holders:
        bad = world.push(service(errors, rollout=rollout, env="  env: {ERROR_PERCENT: '30'}"),
                         "web v6 as a canary: fails 30 % of its requests")
        assert wait_for(lambda: "rolled-back" in world.results(bad), timeout=240), world.agent_log()
        assert wait_for(lambda: world.head() != bad, timeout=60), "no revert commit"
        time.sleep(2)  # the holders' requests after the switch back
    watcher.stop()
    attempt = world.attempts(bad)[-1]
    assert "canary at 10%" in attempt.message and "errors" in attempt.message, attempt.message
    assert f"This reverts commit {bad}" in pygit2.Repository(str(world.bare))[world.head()].message
    assert {a.body for a in load.answers} <= {"demo-web v2", "demo-web v6", "demo-web v6 failed this one"}
    for host in world.addresses:
        back = _restored(watcher, host)
        after = [a for a in load.answers if a.host == host and a.started > back]
        assert after and {(a.status, a.body) for a in after} == {(200, "demo-web v2")}, (host, after[:3])
        # Before the public weight, not one public request reached the failing release.
        assert {a.body for a in load.answers if a.host == host
                and a.ended < _begun(watcher, "SetWeights", host, "canary: 10%")} == {"demo-web v2"}
    failed = load.failures()
    print(f"{len(failed)} of {len(load.answers)} answered 500 by the canary (10 % share) before the abort")
    for host in world.addresses:
        mine = [a.started for a in failed if a.host == host]
        fails = [r["at"] for r in watcher.seen("failed", "Observe", host)] + [r["at"] for r in watcher.seen("done", "Observe", host)]
        rb = [r["at"] for r in watcher.records.values() if r.get("event") == "rollback"]
        ten = _done(watcher, "SetWeights", host, "canary: 10%")
        print(host, f"10% at 0, 500s at {[round(t - ten, 2) for t in mine]}, observe ended {[round(t - ten, 2) for t in fails]}, "
              f"rollback {[round(t - ten, 2) for t in rb]}, restored {round(_restored(watcher, host) - ten, 2)}")
    assert all(a.body == "demo-web v6 failed this one" for a in failed), failed[:3]
    assert world.serving("v2")
    # A client holding v6's cookie: answered by blue from the moment v6 is in maintenance (the
    # abort's first router command on the public backend), not only once the switch back is over.
    held = 0
    for host in world.addresses:
        aborted = [r["at"] for r in watcher.records.values() if r.get("event") == "aborted" and r.get("host") == host]
        assert aborted, f"{host}: no 'aborted' in the journal"
        mine = [a for a in holders.answers if a.host == host and a.cookie]
        if not mine:
            continue  # this host's holder never got v6's cookie before the abort
        held += 1
        after = [a for a in mine if a.started > aborted[0]]
        assert after and {(a.status, a.body) for a in after} == {(200, "demo-web v2")}, (host, after[:3])
        print(host, f"v6's cookie: {len([a for a in mine if a.started <= aborted[0]])} requests before the abort, "
                    f"{len([a for a in after if a.started < _restored(watcher, host)])} between it and the end of "
                    f"the switch back, {len(after)} after it: all answered by v2")
    seen = {host: sorted({(a.status, a.body[:40], bool(a.cookie)) for a in holders.answers if a.host == host})
            for host in world.addresses}
    assert held, f"no cookie holder got v6's cookie during the canary; what each host's holder got: {seen}"


def test_the_watch_after_the_switch_switches_back_a_release_that_fails_later(world):
    world.ensure("v2")
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with world.load() as load:
        bad = world.push(service(world.fleet.images["v4-flaky"], rollout="{batch_size: 3, watch: 90s}",
                                 env="  env: {FAIL_AFTER: '20'}"), "web v4, its check fails 20 s after it starts")
        assert wait_for(lambda: "rolled-back" in world.results(bad), timeout=240), world.agent_log()
        assert wait_for(lambda: world.head() != bad, timeout=60), "no revert commit"
    watcher.stop()
    attempt = world.attempts(bad)[-1]
    assert "watch after the switch" in attempt.message and "DOWN" in attempt.message, attempt.message
    assert f"This reverts commit {bad}" in pygit2.Repository(str(world.bare))[world.head()].message
    for host in world.addresses:
        switched = _done(watcher, "Switch", host, "switched")
        began = _begun(watcher, "Watch", host, "watch")
        assert switched <= began, host
        back = _restored(watcher, host)
        after = [a for a in load.answers if a.host == host and a.started > back]
        assert after and {(a.status, a.body) for a in after} == {(200, "demo-web v2")}, (host, after[:3])
        between = [a for a in load.answers if a.host == host and switched + 1 < a.started and a.ended < back]
        assert between and between[0].body == "demo-web v4", host  # the watched release served after its switch
        # Then v4 went DOWN and v2, kept running as the router's standby, answered at once: in
        # that order, never back to v4.
        served = [a.body for a in sorted(between, key=lambda a: a.started)]
        assert set(served) == {"demo-web v4", "demo-web v2"}, host
        assert "demo-web v4" not in served[served.index("demo-web v2"):], host
    failed = load.failures()
    assert failed == [], f"{len(failed)} of {len(load.answers)} failed: {failed[:3]}"
    assert world.serving("v2")


def test_the_agent_killed_mid_watch_watches_what_is_left_of_the_window_after_a_restart(world):
    world.ensure("v2")
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    window = 40
    commit = world.push(service(world.fleet.images["v1"], rollout=f"{{batch_size: 3, watch: {window}s}}"),
                        "web v1 with a watch; the agent dies during it")
    assert wait_for(lambda: [r for r in watcher.records.values() if r.get("event") == "watch"], timeout=240, every=0.1), \
        world.agent_log()
    time.sleep(5)
    world.agent.kill()
    killed = time.time()
    watcher.poll()
    first = {r["host"]: r["since"] for r in watcher.records.values() if r.get("event") == "watch"}
    assert set(first) == set(world.addresses) and "deployed" not in world.results(commit)
    world.agent.start()
    assert wait_for(lambda: "deployed" in world.results(commit), timeout=240), world.agent_log()
    watcher.stop()
    runs = {}
    for r in watcher.records.values():
        if r.get("event") == "watch":
            runs.setdefault(r["run_id"], []).append(r)
    assert len(runs) == 2, runs
    resumed = next(v for v in runs.values() if min(r["at"] for r in v) > killed)
    assert {r["host"]: r["since"] for r in resumed} == first  # the window's start, recorded by the dead run
    done = {r["host"]: r["at"] for r in watcher.records.values() if r.get("event") == "done" and r.get("step") == "Watch"}
    for host, since in first.items():
        assert done[host] >= since + window, host  # the whole window was watched, across the two runs
        assert done[host] < since + window + 30, host  # and not begun again from the start
    assert world.serving("v1")
    assert world.agent.events("recover")
