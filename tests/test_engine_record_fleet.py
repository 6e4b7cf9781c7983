"""Issue 10 on the real fleet: one engine, and a record in git that never lies.

Driven the way a user drives it: a real `git push` into a bare repository
with the hooks installed, the agent (`reconciler run`) as a separate process,
the CLI for the levers, real sshd, dockerd and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from tests.agentproc import AgentProcess
from tests.dbfleet import columns, create_database, drop_database, make_db_env_repo, migrating_image, sql
from tests.envrepo import remove_containers
from tests.pushing import git, wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def web(image: str, port: int, *, migrations: str | None = None, batch: int = 1) -> str:
    return f"""
    web:
      image: {image}
      hosts: all
      ports: ["{port}:8080"]
      health: {{type: http, path: /health, interval: 500ms, successes: 2, deadline: 6s}}
      rollout: {{batch_size: {batch}}}
      stop_timeout: 2s
    """ + (f"  migrations: {migrations}\n" if migrations else "")


@pytest.fixture
def world(fleet, tmp_path, request, monkeypatch):
    name = "r" + request.node.name.replace("test_", "").replace("_", "")[:9]
    dsn = create_database(fleet, f"rdb_{name}")
    sql(dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
    work = make_db_env_repo(tmp_path / "work", fleet, name, dsn)
    work.dsn = dsn
    bare = tmp_path / "env.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    git(work.path, "remote", "add", "origin", str(bare))
    backups = tmp_path / "backups"
    monkeypatch.setenv("RECONCILER_BACKUP_DIR", str(backups))
    agent = AgentProcess(bare, name, work.identity, tmp_path / "agent.log",
                         environ={"RECONCILER_BACKUP_DIR": str(backups)}).start()
    yield work, bare, agent, backups
    agent.stop()
    remove_containers(fleet, f"{name}-")
    drop_database(fleet, f"rdb_{name}")


def push(work, services: str, message: str, policy: str = "") -> str:
    commit = work.commit(services, policy=policy, message=message)
    git(work.path, "push", "-q", "origin", "main")
    return commit


def attempts(bare: Path, commit: str, env: str):
    return gitlog.attempts(pygit2.Repository(str(bare)), commit, env)


def results(bare: Path, commit: str, env: str) -> list[str]:
    return [a.result for a in attempts(bare, commit, env)]


class Poller(threading.Thread):
    """What every host answers, every 0.2 s, until stopped (bounded: at most 15 minutes)."""

    def __init__(self, fleet, port: int) -> None:
        super().__init__(daemon=True)
        self.fleet, self.port = fleet, port
        self.samples: list[tuple[float, str, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        import urllib.request

        deadline = time.time() + 900
        while not self.stopping.is_set() and time.time() < deadline:
            for host in self.fleet.hosts:
                try:
                    with urllib.request.urlopen(f"http://{host.address}:{self.port}/", timeout=1) as response:
                        answer = response.read().decode().strip()
                except OSError:
                    answer = "no answer"
                self.samples.append((time.time(), host.name, answer))
            time.sleep(0.2)

    def stable_instants(self, count: int, margin: float = 1.5) -> list[float]:
        """``count`` instants, spread over the run, around which every host's answer stayed the same."""
        by_host: dict[str, list[tuple[float, str]]] = {}
        for at, host, answer in self.samples:
            by_host.setdefault(host, []).append((at, answer))

        def stable(t: float) -> bool:
            return all(len({a for at, a in rows if t - margin <= at <= t + margin}) == 1 for rows in by_host.values())

        first, last = self.samples[0][0] + margin, self.samples[-1][0] - margin
        candidates = [at for at, host, _ in self.samples if host == self.fleet.hosts[0].name and first <= at <= last and stable(at)]
        # The changes are what matter: prefer instants from every stable stretch.
        step = max(1, len(candidates) // count)
        return candidates[::step][:count]

    def answer_at(self, host: str, t: float) -> str:
        return min((abs(at - t), answer) for at, h, answer in self.samples if h == host)[1]


def answer_of(image: str | None) -> str:
    """What the demo image answers on / (its tag's version), or no answer."""
    if image is None:
        return "no answer"
    tag = image.split("@")[0].rsplit(":", 1)[1]
    return f"demo-web {tag.split('-')[0]}"


def test_history_at_matches_what_the_hosts_ran_through_deploy_failure_cli_rollback_and_restore(fleet, world, capsys):
    work, bare, agent, backups = world
    port = 18411
    poller = Poller(fleet, port)
    poller.start()
    try:
        v1 = push(work, web(fleet.images["v1"], port), "web v1")
        assert wait_for(lambda: "deployed" in results(bare, v1, work.env)), agent.log.read_text()
        v2 = push(work, web(fleet.images["v2"], port), "web v2")
        assert wait_for(lambda: "deployed" in results(bare, v2, work.env)), agent.log.read_text()
        # A rolling deploy of a never-healthy release: h1 serves it until its check gives up.
        bad = push(work, web(fleet.images["v3-unhealthy"], port), "web v3")
        assert wait_for(lambda: "rolled-back" in results(bare, bad, work.env)), agent.log.read_text()
        repo = pygit2.Repository(str(bare))
        revert = wait_for(lambda: gitlog.branch_head(repo, "refs/heads/main") != bad and gitlog.branch_head(repo, "refs/heads/main"))
        assert wait_for(lambda: results(bare, revert, work.env)), agent.log.read_text()  # the agent noted the revert in sync
        time.sleep(2)

        # The rollback lever from a shell, through the same engine: lock, journal, note, and a commit.
        cli = ["--repo", str(bare), "--env", work.env, "--identity", work.identity, "--yes"]
        assert wait_for(lambda: main(["rollback", *cli]) == 0, timeout=60, every=3)
        lever = gitlog.branch_head(repo, "refs/heads/main")
        assert lever != revert and repo[lever].message.startswith(f"Roll back {work.env} to {v1[:12]}")
        (rolled,) = attempts(bare, lever, work.env)
        assert (rolled.operation, rolled.result, rolled.trigger) == ("rollback", "rolled-back", "cli")
        assert wait_for(lambda: set(poller.answer_at(h.name, time.time()) for h in fleet.hosts) == {"demo-web v1"})
        time.sleep(6)  # the agent sees the lever's commit and finds it in sync: it does not undo it
        assert {poller.answer_at(h.name, time.time()) for h in fleet.hosts} == {"demo-web v1"}

        # A database restore from a shell, through the engine too.
        backup = sorted(p for p in backups.rglob("*.dump"))[0]
        assert main(["db", "restore", str(backup), "--env", work.env, "--repo", str(bare), "--store", str(backups),
                     "--identity", work.identity, "--yes"]) == 0
        restored = [a for a in attempts(bare, lever, work.env) if a.operation == "restore"]
        assert [a.result for a in restored] == ["restored"] and restored[0].details["database"]["restore"]["backup"] == str(backup)
        time.sleep(2)
    finally:
        poller.stopping.set()
        poller.join()

    capsys.readouterr()  # what the levers printed
    # Ten instants: what git says each host ran is what the host answered.
    instants = poller.stable_instants(10)
    assert len(instants) == 10
    seen_versions = set()
    for t in instants:
        assert main(["history", "--repo", str(bare), "--env", work.env, "--at", str(t), "--json"]) == 0
        said = {(s["host"], s["service"]): s["image"] for s in json.loads(capsys.readouterr().out)}
        for host in fleet.hosts:
            answered = poller.answer_at(host.name, t)
            assert answer_of(said.get((host.name, "web"))) == answered, (t, host.name, said, answered)
            seen_versions.add(answered)
    assert {"demo-web v1", "demo-web v2"} <= seen_versions
    # The moment h1 ran the broken release is in the record too (per host, not per service).
    broken = [s for a in attempts(bare, bad, work.env) for s in a.serving if s.image and "v3-unhealthy" in s.image]
    assert broken and {s.host for s in broken} == {"h1"}
    assert main(["history", "--repo", str(bare), "--env", work.env, "--at", str(broken[0].at + 0.5), "--json"]) == 0
    at_failure = {(s["host"]): s["image"] for s in json.loads(capsys.readouterr().out)}
    assert "v3-unhealthy" in at_failure["h1"] and "v2" in at_failure["h2"]
    agent.lines()  # JSON lines only


def test_a_refused_commit_stays_refused_and_is_reverted(fleet, world):
    work, bare, agent, _ = world
    port = 18412
    good = migrating_image(fleet, {"0001_notes_tag.expand.sql": "ALTER TABLE notes ADD COLUMN tag text;"}, version="v1")
    v1 = push(work, web(good, port, migrations="{path: /migrations}"), "web v1 with an expand migration")
    assert wait_for(lambda: "deployed" in results(bare, v1, work.env)), agent.log.read_text()
    assert "tag" in columns(work.dsn, "notes")
    hostile = migrating_image(fleet, {"0001_notes_tag.expand.sql": "ALTER TABLE notes ADD COLUMN tag text;",
                                      "0002_drop_body.expand.sql": "ALTER TABLE notes DROP COLUMN body;"}, version="v2")
    bad = push(work, web(hostile, port, migrations="{path: /migrations}"), "web v2 drops a column in an expand file")
    assert wait_for(lambda: "refused" in results(bare, bad, work.env)), agent.log.read_text()
    (refusal,) = attempts(bare, bad, work.env)
    assert refusal.reason == "MigrationRefused" and "0002_drop_body.expand.sql" in refusal.message
    assert "body" in columns(work.dsn, "notes")  # nothing ran
    repo = pygit2.Repository(str(bare))
    head = wait_for(lambda: gitlog.branch_head(repo, "refs/heads/main") if gitlog.branch_head(repo, "refs/heads/main") != bad else None)
    assert f"This reverts commit {bad}" in repo[head].message and refusal.revert_commit == head
    # Later commits do not turn the refusal into anything else.
    git(work.path, "pull", "-q", "--rebase", "origin", "main")
    after = push(work, web(good, port, migrations="{path: /migrations}") + "# a comment\n", "a comment")
    assert wait_for(lambda: results(bare, after, work.env)), agent.log.read_text()
    assert results(bare, bad, work.env) == ["refused"]
    agent.lines()


def test_a_contract_runs_through_the_agent_when_its_soak_ends(fleet, world):
    work, bare, agent, _ = world
    port = 18413
    files = {"0001_notes_tag.expand.sql": "ALTER TABLE notes ADD COLUMN tag text;",
             "0002_notes_old.expand.sql": "ALTER TABLE notes ADD COLUMN old text;",
             "0003_drop_old.contract.sql": "ALTER TABLE notes DROP COLUMN old;"}
    image = migrating_image(fleet, files, version="v1")
    release = push(work, web(image, port, migrations="{path: /migrations, allow_contract: true, soak: 6s}"), "web v1")
    assert wait_for(lambda: "deployed" in results(bare, release, work.env)), agent.log.read_text()
    assert "old" in columns(work.dsn, "notes")  # the contract waits for the soak
    # Queued for the end of its soak, not for the next drift check (minutes away).
    assert wait_for(lambda: "contracted" in results(bare, release, work.env), timeout=60), agent.log.read_text()
    assert "old" not in columns(work.dsn, "notes")
    (contracted,) = [a for a in attempts(bare, release, work.env) if a.result == "contracted"]
    assert contracted.operation == "contract" and contracted.details["database"]["backup"]
    lines = agent.lines()
    assert not [line for line in lines if line.get("reason") == "InternalError" or "no run begun" in json.dumps(line)]
