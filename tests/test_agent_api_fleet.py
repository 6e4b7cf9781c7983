"""``plan`` and ``status`` through the running agent, on the real fleet, as a user runs them.

The agent (`reconciler run`) is its own process on a bare repository with
the hooks installed; one push deploys one tiny service to the three hosts.
Then `reconciler plan` in a subprocess: it goes through the agent (stderr
says so) and prints the same plan as `--no-agent`; a container stopped by
hand (the engine's API, not ours) shows in the next plan through the agent
(observed at request time, not kept); a working tree whose router settings
differ is refused by the agent and observed from the CLI; with the agent
stopped, the plan falls back and still works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import docker
import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from tests.agentproc import AgentProcess
from tests.bgfleet import router_block
from tests.envrepo import EnvRepo, make_env_repo, remove_containers
from tests.pushing import git, wait_for

pytestmark = pytest.mark.fleet

ENV = "agentapi"  # every container here is agentapi-*

SERVICE = """
web:
  image: {image}
  hosts: all
  health: {{type: running}}
  stop_timeout: 2s
"""


class RoutedRepo(EnvRepo):
    def blocks(self) -> str:
        return router_block(self.sandbox)  # the sandbox's routers: in the shape, though nothing is exposed


class World:
    def __init__(self, fleet, root) -> None:
        self.fleet = fleet
        plain = make_env_repo(root / "work", fleet, ENV)
        self.work = RoutedRepo(plain.path, plain.env, fleet)
        self.bare = root / "env.git"
        self.state = root / "state"
        git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        assert main(["install-hooks", str(self.bare)]) == 0
        git(self.work.path, "remote", "add", "origin", str(self.bare))
        self.agent = AgentProcess(self.bare, ENV, fleet.identity_file, root / "agent.log", state=self.state)

    def cli(self, *args: str, repo=None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")} | {"RECONCILER_CONFIG": ""}
        return subprocess.run([sys.executable, "-m", "reconciler", *args, "--repo", str(repo or self.bare), "--env", ENV,
                               "--identity", self.fleet.identity_file, "--state", str(self.state)],
                              capture_output=True, text=True, timeout=120, env=env)

    def results(self, commit: str) -> list[str]:
        return [a.result for a in gitlog.attempts(pygit2.Repository(str(self.bare)), commit, ENV)]

    def agent_log(self) -> str:
        return self.agent.text()


@pytest.fixture(scope="module")
def world(fleet, tmp_path_factory):
    w = World(fleet, tmp_path_factory.mktemp("agentapi"))
    remove_containers(fleet, f"{ENV}-")
    try:
        first = w.work.commit(SERVICE.format(image=fleet.images["v1"]), policy="drift_interval: 1h", message="web v1")
        git(w.work.path, "push", "-q", "origin", "main")
        w.agent.start()
        assert wait_for(lambda: "deployed" in w.results(first), timeout=180), w.agent_log()
        yield w
    finally:
        w.agent.stop()
        remove_containers(fleet, f"{ENV}-")


def stop_by_hand(fleet, host_name: str, name: str) -> None:
    host = next(h for h in fleet.hosts if h.name == host_name)
    client = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41")
    try:
        client.api.stop(name, timeout=5)
    finally:
        client.close()


def test_plan_through_the_agent_is_the_plan_without_it_and_is_observed_now(world, fleet):
    ours = world.cli("plan")
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ours.stderr.strip() == f"observed through the agent (pid {world.agent.pid})", ours.stderr
    direct = world.cli("plan", "--no-agent")
    assert direct.returncode == 0 and direct.stdout == ours.stdout, (direct.stdout, ours.stdout)
    assert direct.stderr.strip() == "observed over SSH from here (--no-agent)"
    status = world.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["observed"]["via"] == "agent" and {r["host"] for r in shown["hosts"]} == {"h1", "h2", "h3"}

    before = json.loads(world.cli("plan", "--json").stdout)
    assert before["observed"]["via"] == "agent" and before["findings"] == []
    stop_by_hand(fleet, "h2", f"{ENV}-web")
    after = world.cli("plan", "--json")
    assert after.returncode == 0, after.stdout + after.stderr  # policy drift: report
    plan = json.loads(after.stdout)
    assert plan["observed"]["via"] == "agent"
    assert [(f["host"], f["kind"]) for f in plan["findings"]] == [("h2", "drift")], plan["findings"]
    assert "exited" in plan["findings"][0]["detail"]
    direct = world.cli("plan", "--json", "--no-agent")
    assert {k: v for k, v in json.loads(direct.stdout).items() if k != "observed"} == \
        {k: v for k, v in plan.items() if k != "observed"}


def test_a_worktree_with_other_router_settings_is_refused_and_observed_from_here(world, fleet):
    path = world.work.path / "environments" / ENV / "environment.yaml"
    text = path.read_text()
    admin = next(line for line in text.splitlines() if line.strip().startswith("admin:"))
    path.write_text(text.replace(admin, admin.replace(admin.rsplit(":", 1)[1], "19999")))
    try:
        preview = world.cli("plan", "--worktree", repo=world.work.path)
    finally:
        path.write_text(text)
    assert preview.returncode in (0, 10), preview.stdout + preview.stderr
    assert preview.stderr.strip() == ("observed over SSH from here (the agent refused: the router settings differ "
                                      "from the agent's: admin)"), preview.stderr


def test_with_the_agent_stopped_the_plan_falls_back_and_works(world, fleet):
    with_agent = world.cli("plan")
    world.agent.stop()
    alone = world.cli("plan")
    assert alone.returncode == with_agent.returncode and alone.stdout == with_agent.stdout, alone.stderr
    assert alone.stderr.strip() == f"observed over SSH from here (no agent: no socket at {world.state / 'api.sock'})"
