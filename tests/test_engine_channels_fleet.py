"""A deploy on the sandbox fleet whose engine connections are channels
straight to each host's engine socket (``docker_socket`` in the host
entries; the sandbox's engines listen at /var/lib/reconciler-sandbox/hN/),
through the real engine (``engine.run``) and the real sshd of each host.

The hosts are opened as ``fleet.open_hosts`` opens them, with the host
entry's ``docker_socket`` passed to ``DockerHost`` (``open_hosts`` below is
that function plus the keyword; the lead wires the same keyword into
``adapters/fleet.py``).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import fleet as fleet_adapter
from reconciler.adapters.hosts import DockerHost
from reconciler.adapters.ssh import connect
from tests.envrepo import _SIG, containers, make_env_repo, remove_containers, serving

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "tslocal"
PORT = 18410


def commit(repo, sandbox, services: str, message: str) -> str:
    hosts = "\n".join(f"  {h.name}: {{address: {h.address}, port: {h.port}, user: {h.user}, "
                      f"docker_socket: {h.docker_socket}}}" for h in sandbox.hosts)
    (repo.path / "environments" / ENV / "environment.yaml").write_text(
        f"hosts:\n{hosts}\nservices:\n" + textwrap.indent(textwrap.dedent(services).strip(), "  ") + "\n")
    git = pygit2.Repository(str(repo.path))
    git.index.add_all()
    git.index.write()
    parents = [] if git.head_is_unborn else [git.head.target]
    return str(git.create_commit("HEAD", _SIG, _SIG, message, git.index.write_tree(), parents))


def web(image: str) -> str:
    return f"""
    web:
      image: {image}
      hosts: all
      ports: ["{PORT}:8080"]
      health: {{type: http, path: /health, interval: 500ms, successes: 2, deadline: 20s}}
      stop_timeout: 2s
    """


@pytest.fixture
def env_repo(fleet, tmp_path):
    remove_containers(fleet, f"{ENV}-")
    repo = make_env_repo(tmp_path / "envrepo", fleet, ENV)
    yield repo
    remove_containers(fleet, f"{ENV}-")


def test_a_deploy_over_channels_straight_to_each_hosts_engine_socket(fleet, env_repo, caplog):
    from reconciler.engine.deploy import fleet_git_dir
    from reconciler.engine.run import Context, Request, run

    caplog.set_level(logging.WARNING)
    opened: list[DockerHost] = []

    def open_hosts(environment, known_hosts_file):
        hosts = {}
        for host in environment.hosts:
            access = fleet_adapter.access_for(host, identity_file=fleet.identity_file, known_hosts_file=known_hosts_file)
            driver = DockerHost(host.name, connect(access), reconnect=lambda a=access: connect(a),
                                docker_socket=host.docker_socket)
            driver.ping()
            hosts[host.name] = driver
            opened.append(driver)
        return hosts

    def deploy(commit_id: str):
        gitdir = Path(fleet_git_dir(env_repo.path))
        ctx = Context(repo=gitdir, state_dir=gitdir / "reconciler", open_hosts=open_hosts,
                      close_hosts=fleet_adapter.close_hosts, observers=(lambda *a, **k: None,), confirm=lambda plan: True)
        return run(ctx, Request(ENV, "deploy", commit=commit_id, trigger="cli", actor="test", force=True))

    first = deploy(commit(env_repo, fleet, web(fleet.images["v1"]), "web v1"))
    assert first.outcome.result == "deployed", first.outcome.failure
    second = deploy(commit(env_repo, fleet, web(fleet.images["v2"]), "web v2"))
    assert second.outcome.result == "deployed", second.outcome.failure

    assert set(serving(fleet, PORT).values()) == {"demo-web v2"}, serving(fleet, PORT)
    running = containers(fleet, f"{ENV}-web")
    assert all(any(status == "running" for _, _, status in running[h.name]) for h in fleet.hosts), running
    # Every engine connection of every host went straight to its socket:
    # none was refused, so none ran dial-stdio.
    assert opened and {d.engine_channels.socket for d in opened} == {h.docker_socket for h in fleet.hosts}
    assert {d.engine_channels.via() for d in opened} == {"streamlocal"}
    refused = [r.getMessage() for r in caplog.records if "running `docker" in r.getMessage()]
    assert refused == []
