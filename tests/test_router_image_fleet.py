"""Blue-green through a router run from a pinned image, on all three sandbox hosts, as the deploy user.

The environment says ``router: {image: 10.213.0.1:5000/sandbox/haproxy:TAG@sha256:..., bind: "{address}:8091"}``
(the image ``sandbox up`` builds from Debian's haproxy and pushes), so the
product runs HAProxy as a container on each host, on its own port (8091:
never the package HAProxy's port 80 the other tests use).  Driven as a user
drives it: a bare repository with the hooks, the agent (``reconciler run``)
as its own process, real ``git push``es, the rollback lever from a shell.
Under a bounded load (10 requests a second per host, a fresh connection
each, to the hosts' addresses only): a deploy v1 -> v2, the rollback lever
back to v1, and a change of the router's own image; every request answered
200 by the version expected at its moment.  The hosts are reached as the
non-root deploy user (the sandbox's ``rcl-deploy``), the router's files are
that user's; a second environment declaring a router on the same hosts and
port is refused, naming both.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.adapters.ssh import connect
from reconciler.core import router_image as ri
from reconciler.sandbox import router_image as sandbox_router_image
from reconciler.sandbox.layout import DEPLOY_USER
from tests.agentproc import AgentProcess, lever, push_on_top, user_repos
from tests.bgfleet import JournalWatcher, Load, one_request
from tests.envrepo import remove_containers
from tests.pushing import git, wait_for
from tests.test_blue_green_fleet import expect_switch, switch_windows

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "imagert"  # every container this module creates is imagert-* or reconciler-router-imagert*
OTHER = "imagert2"  # the environment that may not take the router over
HOSTNAME = "web.imagert.test"
PORT = 8091
ADMIN = "127.0.0.1:9911"
_SIG = pygit2.Signature("test author", "author@reconciler.invalid")


def router_dir(fleet, host: str) -> Path:
    return Path(fleet.state_dir) / host / "imagert-router"


def environment_yaml(fleet, web_image: str, router_tag: str, router_image: str | None = None) -> str:
    hosts = "\n".join(f"  {h.name}: {{address: {h.address}, port: {h.port}, user: {h.user}}}" for h in fleet.hosts)
    folder = f"{fleet.state_dir}/{{host}}/imagert-router"
    return f"""hosts:
{hosts}
router:
  image: {router_image or sandbox_router_image.reference(fleet.registry, router_tag)}
  bind: "{{address}}:{PORT}"
  admin: {ADMIN}
  config_file: {folder}/haproxy.cfg
  state_file: {folder}/server-state
  log: stdout
services:
  web:
    image: {web_image}
    hosts: all
    expose: {{hosts: [{HOSTNAME}], port: 8080, drain: 10s}}
    health: {{type: http, path: /health, interval: 500ms, successes: 2, deadline: 20s}}
    rollout: {{batch_size: 1}}
    stop_timeout: 2s
"""


class World:
    def __init__(self, fleet, root: Path) -> None:
        self.fleet = fleet
        self.work, self.bare = user_repos(root, fleet.known_hosts_file, ENV, OTHER)
        self.state = root / "state"
        self.agent = AgentProcess(self.bare, ENV, fleet.identity_file, root / "agent.log", state=self.state)
        self.addresses = {h.name: h.address for h in fleet.hosts}
        self.web, self.router = "v1", "2.6-a"

    def push(self, message: str, *, web: str | None = None, router: str | None = None,
             router_image: str | None = None) -> str:
        """``router_image``: another image for the router, this push only."""
        self.web, self.router = web or self.web, router or self.router

        def commit() -> str:
            path = self.work / "environments" / ENV / "environment.yaml"
            path.write_text(environment_yaml(self.fleet, self.fleet.images[self.web], self.router, router_image))
            repo = pygit2.Repository(str(self.work))
            repo.index.add_all()
            repo.index.write()
            parents = [] if repo.head_is_unborn else [repo.head.target]
            return str(repo.create_commit("HEAD", _SIG, _SIG, message, repo.index.write_tree(), parents))

        return push_on_top(self.work, self.bare, commit)

    def results(self, commit: str) -> list[str]:
        return [a.result for a in gitlog.attempts(pygit2.Repository(str(self.bare)), commit, ENV)]

    def head(self) -> str:
        return gitlog.branch_head(pygit2.Repository(str(self.bare)), "refs/heads/main")

    def answers(self) -> dict:
        return {name: one_request(address, HOSTNAME, PORT) for name, address in self.addresses.items()}

    def serving(self, version: str) -> bool:
        return self.answers() == {name: (200, f"demo-web {version}") for name in self.addresses}

    def agent_log(self) -> str:
        return self.agent.text(4000)

    def routers(self) -> dict[str, list[dict]]:
        """Per host, the router containers of this module's environments (the engine's view)."""
        import docker

        out = {}
        for h in self.fleet.hosts:
            client = docker.APIClient(base_url=f"unix://{h.docker_socket}", version="1.41")
            try:
                out[h.name] = [c for c in client.containers(all=True)
                               if (c.get("Labels") or {}).get(ri.LABEL_ROUTER) in (ENV, OTHER)]
            finally:
                client.close()
        return out

    def close(self) -> None:
        self.agent.stop()
        remove_containers(self.fleet, f"{ENV}-")
        remove_containers(self.fleet, ri.container_name(ENV))


def _fresh_router_dirs(fleet) -> None:
    """What the host's administrator gives the deploy user: a directory for the router's files."""
    user = pwd.getpwnam(DEPLOY_USER)
    for h in fleet.hosts:
        folder = router_dir(fleet, h.name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o755)
        os.chown(folder, user.pw_uid, user.pw_gid)


@pytest.fixture(scope="module")
def world(fleet, tmp_path_factory):
    w = World(fleet, tmp_path_factory.mktemp("imagert"))
    w.close()  # a previous session's leftovers
    _fresh_router_dirs(fleet)
    try:
        first = w.push("web v1 behind a router run from an image")
        w.agent.start()
        assert wait_for(lambda: "deployed" in w.results(first), timeout=240), w.agent_log()
        assert wait_for(lambda: w.serving("v1")), w.answers()
        yield w
    finally:
        w.close()


def test_the_router_runs_as_a_container_of_the_pinned_image_on_every_host(world, fleet):
    reference = sandbox_router_image.reference(fleet.registry, "2.6-a")
    for host, containers in world.routers().items():
        (c,) = containers
        assert c["Names"] == [f"/{ri.container_name(ENV)}"] and c["State"] == "running", (host, c)
        assert c["Labels"][ri.LABEL_ROUTER_IMAGE] == reference
        assert c["Labels"][ri.LABEL_ROUTER_BIND] == f"{fleet.host(host).address}:{PORT}"
        assert "io.reconciler.environment" not in c["Labels"]  # no service's: reconciliation leaves it alone
    # Observed like the containers: `status` shows it on every host, in place.
    status = subprocess.run([sys.executable, "-m", "reconciler", "status", "--repo", str(world.bare), "--env", ENV,
                             "--identity", fleet.identity_file, "--state", str(world.state)], capture_output=True, text=True)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = [line for line in status.stdout.splitlines() if "(router)" in line]
    assert len(lines) == 3 and all(reference in line and "DRIFT" not in line for line in lines), status.stdout
    # The package HAProxy on port 80 is not this router: it knows nothing of this environment.
    assert one_request(fleet.hosts[0].address, HOSTNAME, 80)[0] == 404


def test_a_deploy_under_load_through_the_image_router_loses_no_request(world, fleet):
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME, port=PORT) as load:
        commit = world.push("web v2", web="v2")
        assert wait_for(lambda: "deployed" in world.results(commit), timeout=180), world.agent_log()
    watcher.stop()
    expect_switch(load, switch_windows(watcher, world.addresses), "v1", "v2")
    assert not watcher.seen("begin", "StartRouter")  # the router was left as it was


def test_the_rollback_lever_switches_back_through_the_image_router_under_load(world, fleet):
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME, port=PORT) as load:
        done = lever(world.bare, ENV, fleet.identity_file, "rollback")
        assert done.returncode == 0, done.stdout + done.stderr
    watcher.stop()
    expect_switch(load, switch_windows(watcher, world.addresses), "v2", "v1")
    world.web = "v1"  # what the lever's commit says now


def test_a_new_router_image_replaces_the_router_under_load_and_keeps_serving(world, fleet):
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME, port=PORT) as load:
        commit = world.push("router: the next HAProxy image", router="2.6-b")
        assert wait_for(lambda: "deployed" in world.results(commit), timeout=180), world.agent_log()
    watcher.stop()
    failures = load.failures()
    assert failures == [], f"{len(failures)} failed of {len(load.answers)}: {failures[:3]}"
    assert {a.body for a in load.answers} == {"demo-web v1"} and len(load.answers) >= 3 * 40
    for host in world.addresses:
        assert watcher.seen("done", "StartRouter", host), host
    reference = sandbox_router_image.reference(fleet.registry, "2.6-b")
    for host, containers in world.routers().items():
        assert [(c["Names"], c["Labels"][ri.LABEL_ROUTER_IMAGE]) for c in containers] == [
            ([f"/{ri.container_name(ENV)}"], reference)], host  # the old one is gone, nothing set aside
    # And the environment is in sync now: nothing more to start or replace.
    plan = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--repo", str(world.bare), "--env", ENV,
                           "--identity", fleet.identity_file], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_every_host_was_reached_as_the_non_root_deploy_user(world, fleet):
    assert {h.user for h in fleet.hosts} == {DEPLOY_USER}
    for h in fleet.hosts:
        conn = connect(h.ssh_access())  # the product's own connection, as the agent opens it
        try:
            assert conn.run("id -un", hide=True, in_stream=False).stdout.strip() == DEPLOY_USER
            assert conn.run("id -Gn", hide=True, in_stream=False).stdout.split().count("docker") == 1
        finally:
            conn.close()
        # The router's files were written by the agent over that connection: they are the deploy user's.
        for name in ("haproxy.cfg", "server-state"):
            assert (router_dir(fleet, h.name) / name).owner() == DEPLOY_USER, (h.name, name)


def test_a_second_environment_cannot_take_over_the_router_of_a_host_and_port(world, fleet):
    yaml = environment_yaml(fleet, fleet.images["v1"], "2.6-a").replace(HOSTNAME, "web.imagert2.test")
    (world.work / "environments" / OTHER / "environment.yaml").write_text(yaml)
    git(world.work, "add", "environments")
    git(world.work, "commit", "-q", "-m", "a second environment on the same router port")
    plan = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--repo", str(world.work), "--env", OTHER,
                           "--identity", fleet.identity_file], capture_output=True, text=True)
    assert plan.returncode == 1, plan.stdout + plan.stderr
    said = plan.stdout + plan.stderr
    assert f"environment '{ENV}'" in said and f"environment '{OTHER}'" in said and f"port {PORT}" in said, said
    assert not [c for cs in world.routers().values() for c in cs if c["Labels"][ri.LABEL_ROUTER] == OTHER]


def test_the_agent_killed_while_it_replaces_the_router_finishes_after_a_restart_under_load(world, fleet):
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME, port=PORT) as load:
        commit = world.push("router: back to the first HAProxy image, the agent dies on the way", router="2.6-a")
        assert wait_for(lambda: watcher.seen("begin", "StartRouter", "h2"), timeout=120, every=0.02), world.agent_log()
        time.sleep(0.3)  # somewhere inside the replacement
        world.agent.kill()
        watcher.poll()
        assert not watcher.seen("done", "StartRouter", "h2"), "killed too late"
        world.agent.start()
        assert wait_for(lambda: "deployed" in world.results(commit), timeout=180), world.agent_log()
    watcher.stop()
    failures = load.failures()
    assert failures == [], f"{len(failures)} failed of {len(load.answers)}: {failures[:3]}"
    assert {a.body for a in load.answers} == {"demo-web v1"}
    reference = sandbox_router_image.reference(fleet.registry, "2.6-a")
    for host, containers in world.routers().items():
        assert [(c["Names"], c["State"], c["Labels"][ri.LABEL_ROUTER_IMAGE]) for c in containers] == [
            ([f"/{ri.container_name(ENV)}"], "running", reference)], host
    first_at = {}
    for r in watcher.records.values():
        first_at[r["run_id"]] = min(r["at"], first_at.get(r["run_id"], r["at"]))
    runs = sorted(first_at, key=first_at.get)  # the killed run first
    assert len(runs) >= 2
    resumed = [(r["event"], r.get("step")) for r in sorted(watcher.records.values(), key=lambda r: r["at"])
               if r.get("host") == "h2" and r["run_id"] != runs[0]]
    print("h2 after the restart:", resumed)
    assert ("done", "StartRouter") in resumed


def test_a_router_image_that_cannot_serve_fails_its_step_and_the_old_router_keeps_serving(world, fleet):
    """The demo web image as the router's: it has no haproxy, so the new container never starts."""
    good = world.router
    watcher = JournalWatcher(world.state, ENV)
    watcher.start()
    with Load(world.addresses, HOSTNAME, port=PORT) as load:
        world.push("router: an image without haproxy", router_image=fleet.images["v2"])
        assert wait_for(lambda: all(watcher.seen("failed", "StartRouter", h) for h in world.addresses), timeout=180), \
            world.agent_log()
        world.agent.stop()
    watcher.stop()
    failures = load.failures()
    assert failures == [], f"{len(failures)} failed of {len(load.answers)}: {failures[:3]}"
    assert {a.body for a in load.answers} == {"demo-web v1"}
    error = watcher.seen("failed", "StartRouter", "h1")[0].get("error", "")
    assert "router" in error, error
    reference = sandbox_router_image.reference(fleet.registry, good)
    for host, containers in world.routers().items():  # the old router, under its own name again, alone
        assert [(c["Names"], c["State"], c["Labels"][ri.LABEL_ROUTER_IMAGE]) for c in containers] == [
            ([f"/{ri.container_name(ENV)}"], "running", reference)], host
    # Back to the good image: in sync at once, nothing to replace.
    world.push("router: the good image again")
    plan = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--repo", str(world.bare), "--env", ENV,
                           "--identity", fleet.identity_file], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    world.agent.start()
