"""`reconciler demo` twice: the second stops the first's agent and tells the
story again from a fresh copy (repositories, database, containers), not on
top of the first; `demo --stop` stops the agent it left, and says so when
there is none.  (The story itself: tests/test_demo_story_fleet.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from tests.envrepo import containers, serving

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "production"


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (the agent of an in-process demo is this process's child)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def agent_pid(root: Path) -> int:
    return json.loads((root / "agent.json").read_text())["pid"]


def subjects(root: Path) -> list[str]:
    repo = pygit2.Repository(str(root / "environments.git"))
    return [c.message.splitlines()[0] for c in repo.walk(repo.references["refs/heads/main"].target)]


@pytest.fixture
def demo_dir(fleet):
    root = Path(fleet.state_dir) / "demo"
    yield root
    main(["demo", "--stop"])
    from reconciler.sandbox.demo_app import remove_environment_containers

    remove_environment_containers(fleet, ENV)


def test_a_second_demo_stops_the_first_agent_and_starts_from_a_fresh_copy(fleet, demo_dir, capsys):
    assert main(["demo"]) == 0
    capsys.readouterr()
    first_pid = agent_pid(demo_dir)
    first_story = subjects(demo_dir)
    first_containers = {cid for seen in containers(fleet, f"{ENV}-").values() for _, cid, _ in seen}
    assert alive(first_pid) and first_containers

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    second_pid = agent_pid(demo_dir)
    assert f"stopped the previous demo's agent (pid {first_pid})" in out
    assert not alive(first_pid) and alive(second_pid) and second_pid != first_pid
    # A fresh copy: the same five commits (pinned example, three releases, the
    # revert), not ten; the database was reset, so release 1 created the table again.
    assert len(subjects(demo_dir)) == len(first_story) == 5
    assert [s.split(":")[0] for s in subjects(demo_dir)] == [s.split(":")[0] for s in first_story]
    repo = pygit2.Repository(str(demo_dir / "environments.git"))
    release_1 = next(c for c in repo.walk(repo.references["refs/heads/main"].target)
                     if c.message.startswith(f"{ENV}: release 1:"))
    noted = [a for a in gitlog.attempts(repo, str(release_1.id), ENV) if a.result == "deployed"]
    assert noted[-1].details["database"]["migrations"] == ["0001_create_notes.expand.sql"]
    # The first demo's containers were removed, not kept as rollback targets
    # of a history that no longer exists.
    assert serving(fleet, 8080) == {h.name: "demo-web v2" for h in fleet.hosts}
    second_containers = {cid for seen in containers(fleet, f"{ENV}-").values() for _, cid, _ in seen}
    assert second_containers and not second_containers & first_containers

    assert main(["demo", "--stop"]) == 0
    assert capsys.readouterr().out.strip() == f"demo agent (pid {second_pid}) stopped"
    assert not alive(second_pid)
    assert main(["demo", "--stop"]) == 0
    assert capsys.readouterr().out.strip() == "no demo agent is running"
