"""Mirroring, pausing and maintenance through real HAProxies, driven as a user drives them.

Each sandbox host gets an HAProxy of this module's own (port 8181, admin
9941: ``ownrouter.PrivateRouters``), so nothing here touches the routers
other tests use.  The agent runs as its own process on a bare repository
with the hooks installed; changes are real ``git push``es; the levers are
``reconciler pause|resume|maintenance`` run from a shell.

(a) a deploy with ``mirror: {percent: 30, for: 20s}`` under bounded load,
    the agent killed (-9) while the last host mirrors and started again: the
    resumed run mirrors for what is left of the window the dead one began;
    every client answer in the mirror window is blue's, none fails; green
    gets a copy of each request at most once, only while mirroring, and of
    30 % of them within 4 standard deviations of the binomial, counted per
    request id (each load request carries one, green lists what it got):
    counting every copy green got once read high (0.389 asked 0.30), as
    the test's own polls through the router are copied too;
(b) mirroring switched on and off in 1 s blocks (the product's
    StartMirror/StopMirror steps through the router adapter, to a green
    stand-in that answers from its own HAProxy): every answer is blue's and
    the copies follow the share.  Blue's p99 with against without is a
    speed figure, so bench/mirror.py measures it (ratio in the same run,
    target <= 1.10x), not a timed assertion here;
(c) ``reconciler pause`` holds requests, ``reconciler resume`` answers them
    (0 failed); ``reconciler maintenance on`` answers 503 with the page, off
    serves again;
(d) a commit changing the routing rules while paused reloads HAProxy: the
    requests the old worker holds are answered by the resume too (they got
    503 "held too long" at their deadline before: reproduced here first);
(e) a deploy with an expand migration against the sandbox's PostgreSQL and
    ``database_pause``, under load: requests sent while the database steps
    run wait at the router and are answered (by blue) after them, none
    gets through or fails, and the note says how long each host held.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import gitlog
from tests.agentproc import AgentProcess, push_on_top, user_repos
from tests.bgfleet import JournalWatcher, exposed_web, write_environment
from tests.dbfleet import columns, create_database, drop_database, migrating_image, sql
from tests.envrepo import remove_containers
from tests.mirrorfleet import Load, alternate_p99, copies, counting_images, request, tally
from tests.ownrouter import PrivateRouters
from tests.pushing import git, wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "mirror"  # every container this module creates is mirror-*
HOSTNAME = "web.mirror.test"
PORT, ADMIN = 8181, 9941
SPARE_PORT = 18191  # the spare copy's published port on each host (mirror_p99)
PERCENT = 30  # the deploy's mirror share
_SIG = pygit2.Signature("test author", "author@reconciler.invalid")


def web(image: str, extra: str = "", *, service_extra: str = "") -> str:
    """The service; ``extra``: one line under ``expose``, ``service_extra``: lines of the service."""
    return exposed_web(image, HOSTNAME, drain="5s", deadline="30s", rollout=None, expose=extra.strip(), more=service_extra)


class World:
    def __init__(self, fleet, root: Path, routers: PrivateRouters) -> None:
        self.fleet = fleet
        self.routers = routers
        self.work, self.bare = user_repos(root, fleet.known_hosts_file, ENV)
        self.state = root / "state"
        self.backups = root / "backups"
        self.agent = AgentProcess(self.bare, ENV, fleet.identity_file, root / "agent.log", state=self.state,
                                  environ={"RECONCILER_BACKUP_DIR": str(self.backups)})
        self.addresses = {h.name: h.address for h in fleet.hosts}

    def push(self, service_yaml: str, message: str, blocks: str = "") -> str:
        """``blocks``: more of the environment (``database:``), before its services."""
        return push_on_top(self.work, self.bare, lambda: write_environment(
            self.work, ENV, self.fleet, service_yaml, message=message, router=self.routers.block() + blocks))

    def edit(self, change, message: str) -> str:
        """A commit of the environment file as the branch has it (levers' commits included), ``change``d."""
        def commit() -> None:
            path = self.work / "environments" / ENV / "environment.yaml"
            before = path.read_text()
            path.write_text(change(before))
            assert path.read_text() != before, before
            git(self.work, "commit", "-q", "-am", message)

        return push_on_top(self.work, self.bare, commit)

    def lever(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "reconciler", *argv, "--repo", str(self.bare), "--env", ENV,
                               "--identity", self.fleet.identity_file, "--yes"],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "RECONCILER_STATE": str(self.state)})

    def answers(self, path: str = "/") -> dict[str, tuple[int | None, str]]:
        return {n: request(a, PORT, HOSTNAME, path)[:2] for n, a in self.addresses.items()}

    def serving(self, version: str) -> bool:
        return self.answers() == {n: (200, f"demo-web {version}") for n in self.addresses}

    def results(self, commit: str) -> list[str]:
        return [a.result for a in gitlog.attempts(pygit2.Repository(str(self.bare)), commit, ENV)]

    def ensure(self, version: str) -> None:
        """The service serving ``version`` (pushed when a test runs alone)."""
        if not self.serving(version):
            self.push(web(self.images[version]), f"web {version}")
        assert wait_for(lambda: self.serving(version), 240), (self.answers(), self.agent_log()[-3000:])

    def agent_log(self) -> str:
        return self.agent.text()


@pytest.fixture(scope="module")
def world(fleet, tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    remove_containers(fleet, f"{ENV}-")
    with PrivateRouters(fleet, PORT, ADMIN) as routers:
        w = World(fleet, root, routers)
        w.images = counting_images(fleet.registry)
        try:
            w.agent.start()
            yield w
        finally:
            w.agent.stop()
            remove_containers(fleet, f"{ENV}-")


def test_a_deploy_mirrors_its_share_to_green_and_blue_answers_every_request(world):
    first = world.push(web(world.images["mv1"]), "web mv1")
    assert wait_for(lambda: world.serving("mv1"), 240), (world.answers(), world.agent_log()[-3000:])
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    load = Load(world.addresses, PORT, HOSTNAME, rate=10.0, max_requests=2000, max_seconds=240, ids=True).start()
    try:
        commit = world.push(web(world.images["mv2"], f"mirror: {{percent: {PERCENT}, for: 20s}}\n"),
                            "web mv2, mirrored first")
        # kill -9 of the agent once every host has begun mirroring (a batch at a time: the last one
        # mirrors now), started again 3 s later: the mirror goes on
        # meanwhile (it is the router's), and the resumed run mirrors for what is left of the window.
        assert wait_for(lambda: all(watcher.seen("done", "StartMirror", h) for h in world.addresses), 240, every=0.1), \
            world.agent_log()[-3000:]
        world.agent.kill()
        time.sleep(3.0)
        world.agent.start()
        assert wait_for(lambda: world.serving("mv2") and "deployed" in world.results(commit), 300), \
            (world.answers(), world.results(commit), world.agent_log()[-3000:])
        time.sleep(1.0)
    finally:
        load.stop()
        watcher.stop()
    assert "deployed" in world.results(first)
    failed = [s for s in load.samples if s.status != 200]
    assert failed == [], failed[:5]
    tallies = {}
    for host, address in world.addresses.items():
        start, stop = watcher.seen("done", "StartMirror", host), watcher.seen("begin", "StopMirror", host)
        begin, end = watcher.seen("begin", "StartMirror", host), watcher.seen("done", "StopMirror", host)
        assert start and stop and begin and end, (host, watcher.records)
        mine = [s for s in load.samples if s.host == host]
        window = [s for s in mine if begin[0]["at"] <= s.started <= end[-1]["at"]]
        # Blue answered every client request while green got copies.
        assert window and {s.body for s in window} == {"demo-web mv1"}, (host, {s.body for s in window})
        tallies[host] = tally(mine, copies(address, PORT, HOSTNAME), on=(start[0]["at"], stop[-1]["at"]),
                              broad=(begin[0]["at"], end[-1]["at"]))
    # Hosts mirror one batch at a time: the last one was mirroring when the agent died.  Two runs,
    # one window there: the resumed run waited for the rest of the one the killed run began.
    resumed = {r["host"]: r for r in watcher.seen("begin", "WaitMirror") if "what is left" in r["reason"]}
    assert resumed, watcher.seen("begin", "WaitMirror")
    for host, wait in resumed.items():
        windows = watcher.seen("mirror", None, host)
        assert len({r["run_id"] for r in windows}) == 2 and len({r["since"] for r in windows}) == 1, windows
        assert wait["run_id"] != min(windows, key=lambda r: r["at"])["run_id"], (wait, windows)
    # Each copy is of one request, once, and of one that was at the router while it mirrored.
    assert all(not t.duplicates and not t.stray for t in tallies.values()), tallies
    # Green's share, counted per request id over the requests that had the whole
    # window's chance: binomial(n, p), so within 4 standard deviations of n * p.
    # (Copies of the test's own polls, ``foreign``, once made this share look high.)
    n = sum(t.eligible for t in tallies.values())
    k = sum(t.copied for t in tallies.values())
    p = PERCENT / 100
    sigma = math.sqrt(n * p * (1 - p))
    print(f"mirror share: {k}/{n} = {k / n:.3f}, {(k - n * p) / sigma:+.2f} sigma; {tallies}")
    assert n >= 300, tallies  # 3 hosts, 10 a second, 20 s: enough for the bound to mean something
    assert abs(k - n * p) <= 4 * sigma, (k, n, k / n, sigma, tallies)


def test_mirroring_switched_on_and_off_leaves_every_answer_to_blue(world):
    """Green is a stand-in answering from its own HAProxy.  The p99 of the blocks with and without
    mirroring is bench/mirror.py's figure (a timing, so not asserted here); this checks what must
    hold however busy the machine is."""
    world.ensure("mv2")
    samples, without, with_mirror, on_count, copies = alternate_p99(
        world.fleet, world.routers, world.images["mv1"], HOSTNAME, spare=f"{ENV}-spare", spare_port=SPARE_PORT,
        backend="web", port=PORT, green="responder", blocks=15)
    assert [s for s in samples if s.status != 200] == []
    assert {s.body for s in samples} == {"demo-web mv2"}  # the stand-in never answered a client
    assert 0.2 * on_count < copies < 0.4 * on_count  # mirroring did happen (30 % asked)
    assert without > 0 and with_mirror > 0  # both conditions were sampled


def test_pause_holds_requests_and_resume_answers_them_all(world):
    world.ensure("mv2")
    load = Load(world.addresses, PORT, HOSTNAME, rate=5.0, max_requests=600, max_seconds=200).start()
    try:
        time.sleep(2.0)
        pause_started = time.time()
        paused = world.lever("pause", "web", "--deadline", "60s")
        assert paused.returncode == 0, paused.stdout + paused.stderr
        time.sleep(4.0)
        resume_started = time.time()
        resumed = world.lever("resume", "web")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        time.sleep(3.0)
    finally:
        load.stop()
    assert [s for s in load.samples if s.status != 200] == [], [s for s in load.samples if s.status != 200][:5]
    # Each host's load thread waits for its answer: its request sent once the hold was on waited
    # at the router until the resume, and was then answered by the service.
    held = [s for s in load.samples if s.started > pause_started and s.started + s.seconds > resume_started
            and s.started < resume_started]
    assert {s.host for s in held} == set(world.addresses), [(s.host, s.started - pause_started, s.seconds)
                                                            for s in load.samples if s.started > pause_started][:20]
    assert all(s.body == "demo-web mv2" and s.seconds > 3.0 for s in held), [(s.host, s.seconds, s.body) for s in held]
    repo = pygit2.Repository(str(world.bare))
    messages = [c.message.splitlines()[0] for c in repo.walk(repo.references["refs/heads/main"].target)][:2]
    assert messages == ["Resume: web in mirror", "Pause: web in mirror"], messages


def test_maintenance_answers_503_with_the_page_and_off_serves_again(world):
    on = world.lever("maintenance", "on", "web", "--page", "<h1>mirror maintenance page</h1>")
    assert on.returncode == 0, (on.stdout + on.stderr, git(world.bare, "log", "--oneline", "-8").stdout,
                                world.agent_log()[-4000:])
    answers = world.answers()
    assert answers == {n: (503, "<h1>mirror maintenance page</h1>") for n in world.addresses}, answers
    off = world.lever("maintenance", "off", "web")
    assert off.returncode == 0, off.stdout + off.stderr
    assert world.serving("mv2"), world.answers()


def test_a_reload_while_paused_keeps_holding_and_resume_answers_the_requests_held_before_it(world):
    """A commit changing the routing rules while paused reloads HAProxy: the requests held by the
    old worker are released by the resume like the new worker's (not left to a 503 at their deadline)."""
    world.ensure("mv2")
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    load = Load(world.addresses, PORT, HOSTNAME, rate=5.0, max_requests=600, max_seconds=200).start()
    try:
        time.sleep(1.0)
        paused = world.lever("pause", "web", "--deadline", "20s")
        assert paused.returncode == 0, paused.stdout + paused.stderr
        time.sleep(1.0)
        commit = world.edit(lambda text: text.replace(f"hosts: [{HOSTNAME}]", f"hosts: [{HOSTNAME}, www.{HOSTNAME}]"),
                            "a second host name, while paused")
        assert wait_for(lambda: world.results(commit), 120), world.agent_log()[-3000:]
        resume_started = time.time()
        resumed = world.lever("resume", "web")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        time.sleep(2.0)
    finally:
        load.stop()
        watcher.stop()
    assert world.results(commit) == ["deployed"], world.results(commit)
    failed = [(s.host, round(s.seconds, 1), s.status, s.body) for s in load.samples if s.status != 200]
    assert failed == [], failed[:6]
    for host in world.addresses:
        configured = watcher.seen("done", "Configure", host)
        assert configured, (host, watcher.records)  # the router reloaded while paused
        # Held since before the reload (by the old worker), answered once resumed.
        spanned = [s for s in load.samples if s.host == host and s.started < configured[-1]["at"]
                   and s.started + s.seconds > resume_started]
        assert spanned and {s.body for s in spanned} == {"demo-web mv2"}, (host, spanned)


DATABASE = "rdb_mirror_pause"


def test_a_database_pause_holds_requests_during_the_database_steps_and_answers_them(world):
    """A deploy with an expand migration and ``database_pause``, under load: every request that
    reached the router while the database steps ran waited there and was answered after them."""
    world.ensure("mv2")
    dsn = create_database(world.fleet, DATABASE)
    try:
        sql(dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        # Rows enough that the backup and its verification take a moment, so requests arrive while they run.
        sql(dsn, "INSERT INTO notes SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g")
        dsn_file = world.state.parent / "mirror.dsn"  # outside the repository, as for users
        dsn_file.write_text(dsn + "\n")
        dsn_file.chmod(0o600)
        image = migrating_image(world.fleet, {"0001_notes_tag.expand.sql": "ALTER TABLE notes ADD COLUMN tag text;"},
                                version="mv3")
        watcher = JournalWatcher(world.state, ENV)
        watcher.start()
        load = Load(world.addresses, PORT, HOSTNAME, rate=10.0, max_requests=2000, max_seconds=200, ids=True).start()
        try:
            commit = world.push(web(image, "database_pause: {deadline: 60s}", service_extra="migrations: {path: /migrations}\n"),
                                "web mv3 with an expand migration, requests held while it runs",
                                blocks=f"database:\n  dsn_file: {dsn_file}\n  backup: always\n")
            assert wait_for(lambda: world.serving("mv3") and "deployed" in world.results(commit), 300), \
                (world.answers(), world.results(commit), world.agent_log()[-3000:])
            time.sleep(1.0)
        finally:
            load.stop()
            watcher.stop()
        assert [s for s in load.samples if s.status != 200] == [], [s for s in load.samples if s.status != 200][:5]
        assert "tag" in columns(dsn, "notes")
        migrated = watcher.seen("done", "Migrate")
        assert migrated, watcher.records
        for host in world.addresses:
            holding, held = watcher.seen("begin", "HoldRequests", host), watcher.seen("done", "HoldRequests", host)
            released = watcher.seen("begin", "ReleaseRequests", host)
            assert holding and held and released, (host, watcher.records)
            hold_at, release_at = holding[0]["at"], released[-1]["at"]
            # The database steps ran while this host held its requests.
            assert held[-1]["at"] <= migrated[0]["at"] <= release_at, (host, held, migrated, released)
            mine = [s for s in load.samples if s.host == host]
            # Sent while the database steps ran, answered (by blue: the switch comes after them) once they were over.
            waited = [s for s in mine if hold_at <= s.started <= migrated[0]["at"] and s.started + s.seconds >= release_at]
            assert waited and {s.body for s in waited} == {"demo-web mv2"}, \
                (host, hold_at, release_at, [(s.started, s.seconds, s.body) for s in mine if s.started >= hold_at][:10])
            # And none sent while the hold was on got an answer before the release.
            through = [s for s in mine if held[-1]["at"] <= s.started and s.started + s.seconds < release_at]
            assert through == [], (host, through)
        note = [a for a in gitlog.attempts(pygit2.Repository(str(world.bare)), commit, ENV) if a.result == "deployed"][-1]
        assert note.details["database"]["migrations"] == ["0001_notes_tag.expand.sql"], note.details
        assert sorted(note.details["database"]["held"]) == sorted(world.addresses), note.details
    finally:
        drop_database(world.fleet, DATABASE)
