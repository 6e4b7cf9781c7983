"""What a one-shot ``reconciler plan`` asks of each host, and what it loads.

The command runs as a user runs it (its own process, the real CLI, real
paramiko) against SSH hosts in the test process (``tests/sshfake.py``),
which record every connection, exec and Engine API request:

- one SSH connection per host, and one Engine API request on it, the
  container list (the list is the proof that the engine answers: no
  separate version ping first);
- a host that fails its observation fails the plan, naming that host.

``fleet.start_opening``, which opens and observes in the background while
the planner loads, is tested on in-memory drivers at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrepo import DIGEST1, commit, init
from reconciler.adapters import fleet
from reconciler.cli import exitcodes
from reconciler.core.model import Host
from reconciler.errors import EngineError, HostUnreachable
from tests.sshfake import FakeSSHHost

ROOT = Path(__file__).resolve().parents[1]

# The real CLI in its own process; then its exit code.
SCRIPT = """
import json, sys
from reconciler.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code}))
"""


class _FailingEngine(FakeSSHHost):
    """A host whose engine answers the container list with a 500."""

    def _answer(self, method, path):
        if path.endswith("/containers/json"):
            return 500, {"message": "the engine failed"}
        return super()._answer(method, path)


def _hosts(tmp_path, kinds=(FakeSSHHost, FakeSSHHost)):
    made = [kind(tmp_path / f"h{i}", name=f"h{i}") for i, kind in enumerate(kinds, 1)]
    for h in made[1:]:
        h.client_key = made[0].client_key  # one identity reaches every host
    return made


def _repo(tmp_path, hosts, service_extra: str = "") -> Path:
    entries = "\n".join(f"  {h.name}: {{address: 127.0.0.1, port: {h.port}, user: root}}" for h in hosts)
    pins = "".join(Path(h.known_hosts_file).read_text() for h in hosts)
    yaml = (f"hosts:\n{entries}\nservices:\n  web:\n    image: registry.example:5000/demo/web:v1@{DIGEST1}\n"
            "    hosts: all\n    health: {type: running}\n" + service_extra)
    path = tmp_path / "env.git"
    commit(init(path, bare=True), {"environments/staging/environment.yaml": yaml,
                                   "environments/staging/known_hosts": pins}, "two hosts")
    return path


def _plan(repo: Path, identity: str) -> tuple[dict, str]:
    argv = ["plan", "--repo", str(repo), "--env", "staging", "--identity", identity, "--timeout", "20"]
    done = subprocess.run([sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "RECONCILER_CONFIG": "",
                                            "PYTHONPATH": str(ROOT)})
    assert done.stdout, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture
def two_hosts(tmp_path):
    hosts = _hosts(tmp_path)
    yield hosts
    for h in hosts:
        h.stop()


def test_a_plan_opens_one_connection_per_host_and_asks_only_for_the_containers(tmp_path, two_hosts):
    outcome, stderr = _plan(_repo(tmp_path, two_hosts), two_hosts[0].identity_file)
    assert outcome["code"] == exitcodes.CHANGES, stderr  # nothing runs there yet: web would be started
    for h in two_hosts:
        assert h.connections == 1, h.name
        assert h.requests == [("GET", "/v1.41/containers/json")], h.name
        # The fake's sshd has no streamlocal channel: the one engine connection runs dial-stdio.
        assert h.execs == ["docker system dial-stdio"], h.name


def test_a_host_file_secret_is_read_on_each_host_over_the_connection_the_plan_observed_on(tmp_path, two_hosts):
    """Its keyed digest is part of the config hash, as the agent computes it (adapters.secret_files)."""
    for h in two_hosts:
        h.files["/etc/app/db"] = f"password of {h.name}".encode()
    secret = "    secrets:\n      - {name: db-password, env: DB_PASSWORD, file: /etc/app/db}\n"
    outcome, stderr = _plan(_repo(tmp_path, two_hosts, secret), two_hosts[0].identity_file)
    assert outcome["code"] == exitcodes.CHANGES, stderr
    for h in two_hosts:
        assert (h.connections, h.sftp_sessions) == (1, 1), h.name
        assert h.requests == [("GET", "/v1.41/containers/json")], h.name


def test_a_host_whose_engine_fails_fails_the_plan_naming_it(tmp_path):
    hosts = _hosts(tmp_path, (FakeSSHHost, _FailingEngine))
    try:
        outcome, stderr = _plan(_repo(tmp_path, hosts), hosts[0].identity_file)
    finally:
        for h in hosts:
            h.stop()
    assert outcome["code"] == exitcodes.ERROR
    assert "h2: list containers: the engine failed" in stderr, stderr
    assert "h1" not in stderr.replace("h1:", "")  # h1 answered; only h2 is named as failing


# ---------------------------------------------------------------- fleet.start_opening, in memory


class _Driver:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def _opening(names, then, fail_open=()):
    drivers: dict[str, _Driver] = {}

    def open_one(host: Host) -> _Driver:
        if host.name in fail_open:
            raise HostUnreachable("cannot reach it", host=host.name)
        drivers[host.name] = _Driver(host.name)
        return drivers[host.name]

    return fleet.Opening([Host(n, f"10.0.0.{i}") for i, n in enumerate(names, 1)], open_one, then), drivers


def test_each_host_is_observed_on_its_own_connection_and_all_are_closed_once():
    opening, drivers = _opening(["a", "b", "c"], lambda d: f"seen {d.name}")
    opened, seen = opening.result()
    assert seen == {"a": "seen a", "b": "seen b", "c": "seen c"}
    assert opened == drivers
    opening.close()
    opening.close()
    assert [d.closed for d in drivers.values()] == [1, 1, 1]


def test_a_host_that_fails_to_open_or_in_its_observation_closes_every_other_and_names_each():
    def then(driver):
        if driver.name == "b":
            raise EngineError("list containers: the engine failed", host="b")
        return driver.name

    opening, drivers = _opening(["a", "b", "c"], then, fail_open={"c"})
    with pytest.raises(EngineError) as failed:
        opening.result()
    assert "2 hosts failed" in str(failed.value)
    assert "b: list containers: the engine failed" in str(failed.value) and "c: cannot reach it" in str(failed.value)
    assert {n: d.closed for n, d in drivers.items()} == {"a": 1, "b": 1}  # c never opened
    opening.close()
    assert {n: d.closed for n, d in drivers.items()} == {"a": 1, "b": 1}


# ---------------------------------------------------------------- a host with a router, in memory


def test_a_hosts_router_is_observed_beside_its_containers_as_a_run_observes_it(monkeypatch):
    from fakes import image
    from reconciler.core.model import Environment, Expose, HealthCheck, Policy, RouterConfig, Service
    from reconciler.engine import routing
    from routerfakes import RoutedWorld

    hosts = ("h1", "h2")
    v1 = image("registry.test/web", "v1")
    web = Service("web", v1, hosts, health=HealthCheck(kind="http", port=8080, path="/health", interval=0.5,
                                                         successes=2, deadline=10.0),
                  expose=Expose(8080, ("web.test",), drain=5.0), stop_timeout=2.0)
    env = Environment("prod", tuple(Host(h, f"10.0.0.{i}") for i, h in enumerate(hosts, 1)), (web,),
                      Policy(parallel_hosts=2), router=RouterConfig(config_file="/srv/{host}/haproxy.cfg"))
    world = RoutedWorld(*hosts)
    world.registry.publish(v1)
    assert world.apply(env).result == "deployed"
    monkeypatch.setattr(routing, "RouterMap", lambda environment, drivers: {n: world.routers[n] for n in drivers})

    seen = routing.observe_host(env, world.hosts["h1"])

    assert seen == routing.observe(env, {"h1": world.hosts["h1"].observe()}, world.routers)["h1"]
    assert seen.router is not None and seen.router.servers  # the router's servers, not only the containers
