"""The agent's API on its unix socket, with the real server, the real observer and
the real CLI client; the hosts are in-memory (tests/fakes.py), so no SSH.

- an answer is observed at request time (a container stopped between two asks shows);
- a shape the agent does not own is refused (409) and the CLI falls back;
- a host the agent cannot observe comes back as the one-shot path's error;
- no socket, nobody listening, an agent that never answers: fallbacks;
- the socket is 0660; ``plan`` through the agent imports no paramiko, fabric or docker.
"""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reconciler.agent import api
from reconciler.agent.observer import Observer, Refused
from reconciler.cli.commands import _observe
from reconciler.core import schema
from reconciler.core.model import ImageRef, Service
from reconciler.errors import HostUnreachable
from tests import agentrepo
from tests.fakes import World

ROOT = Path(__file__).resolve().parents[1]
ENV = "staging"


class Connections:
    """The agent's connection cache, as the observer uses it: borrowed drivers."""

    def __init__(self, hosts, identity_file: str) -> None:
        self.hosts, self.identity_file, self.borrows = hosts, identity_file, 0

    @contextlib.contextmanager
    def borrow(self, environment, known_hosts_file):
        assert Path(known_hosts_file).read_bytes() == b"# pinned keys\n"
        self.borrows += 1
        yield {h.name: self.hosts[h.name] for h in environment.hosts}


class Agent:
    def __init__(self, tmp: Path) -> None:
        self.repo_path = tmp / "repo"
        self.repo = agentrepo.init(self.repo_path)
        self.commit = agentrepo.commit(self.repo, agentrepo.files_for(), "web v1")
        self.state = tmp / "state"
        self.state.mkdir()
        self.identity = tmp / "id"
        self.identity.write_text("key material\n")
        self.world = World("h1")
        self.host = self.world.hosts["h1"]
        self.connections = Connections(self.world.hosts, str(self.identity))
        self.observer = Observer(self.repo_path, self.state, self.connections, lambda: [ENV])
        self.applied(self.commit)
        self.server = api.start(self.state, self.observer, lambda event, **f: None)

    def target(self, yaml: str | None = None, *, agent_too: bool = False):
        """The CLI's target: the agent's branch, or ``yaml`` on a branch of the CLI's own (and the agent's too)."""
        import argparse

        from reconciler.engine.target import load_target

        rev = "HEAD"
        if yaml is not None:
            files = {f"environments/{ENV}/environment.yaml": yaml, f"environments/{ENV}/known_hosts": "# pinned keys\n"}
            if agent_too:
                self.applied(agentrepo.commit(self.repo, files, "changed for the agent"))
            else:
                agentrepo.commit(self.repo, files, "the CLI's preview", branch="refs/heads/preview")
                rev = "preview"
        return load_target(argparse.Namespace(repo=str(self.repo_path), env=ENV, rev=rev, identity=str(self.identity),
                                              worktree=False))

    def applied(self, commit: str) -> None:
        """As the engine records a commit it applied: the one the agent answers for."""
        from reconciler.adapters.journal import Status, write_status

        write_status(self.state, Status(ENV, last_applied=commit))

    def ask(self, target, routers=True, timeout=10.0):
        pins = Path(target.known_hosts_file).read_bytes()
        return _observe.ask(api.socket_path(self.state), target.environment, pins, routers=routers, timeout=timeout)

    def run_web(self) -> str:
        env = schema.load_environment(_snapshot(self.repo_path, self.commit), ENV)
        return self.host.run_container(env.service("web"), ENV, self.commit, f"{ENV}-web")


def _snapshot(path, commit):
    from reconciler.adapters import source

    return source.snapshot_commit(path, commit)


@pytest.fixture
def agent(tmp_path):
    a = Agent(tmp_path)
    yield a
    a.server.stop()


def test_the_answer_is_observed_at_request_time(agent):
    cid = agent.run_web()
    first = agent.ask(agent.target())
    assert isinstance(first, _observe.FromAgent), first
    assert [(c.id, c.state) for c in first.hosts["h1"].containers] == [(cid, "running")]
    agent.host.containers[cid].state = "exited"  # stopped by hand
    second = agent.ask(agent.target())
    assert [(c.id, c.state) for c in second.hosts["h1"].containers] == [(cid, "exited")]
    assert agent.host.calls["observe"] == 2 and agent.connections.borrows == 2
    assert second.commit == agent.commit


def test_a_shape_the_agent_does_not_own_is_refused_and_the_cli_falls_back(agent):
    moved = agentrepo.env_yaml().replace("10.0.0.1", "10.0.0.9")
    way = agent.ask(agent.target(moved))
    assert isinstance(way, _observe.Fallback)
    assert way.why == "the agent refused: host h1: address: '10.0.0.9' asked, the agent's is '10.0.0.1'"
    assert agent.host.calls.get("observe", 0) == 0


def test_the_agent_answers_for_the_commit_it_applied_not_an_unapplied_branch_head(agent, tmp_path):
    """A head the agent has not applied (its gate may refuse it: unsigned, or
    written straight into the repository) does not steer where it connects."""
    moved = agentrepo.env_yaml().replace("10.0.0.1", "10.0.0.9")
    agentrepo.commit(agent.repo, {f"environments/{ENV}/environment.yaml": moved}, "a head nobody applied")
    way = agent.ask(agent.target())  # the CLI plans the head: h1 at 10.0.0.9
    assert isinstance(way, _observe.Fallback) and "'10.0.0.9' asked, the agent's is '10.0.0.1'" in way.why
    assert agent.host.calls.get("observe", 0) == 0
    fresh = tmp_path / "fresh-state"
    fresh.mkdir()
    observer = Observer(agent.repo_path, fresh, agent.connections, lambda: [ENV])
    with pytest.raises(Refused) as refused:
        observer.observe(ENV, {"hosts": {}})
    assert "has applied no commit yet" in str(refused.value)


def test_a_host_the_agent_cannot_reach_is_the_error_not_a_fallback(agent):
    agent.host.fail("observe", error=HostUnreachable)
    with pytest.raises(HostUnreachable) as raised:
        agent.ask(agent.target())
    assert raised.value.host == "h1" and "observe" in str(raised.value)


def test_host_file_secrets_get_the_agents_digest_of_its_own_files(agent, tmp_path):
    from reconciler.adapters import secret_files

    with_secret = agentrepo.env_yaml().replace("    env:\n", "    secrets:\n      - {name: pw, env: PW, file: /etc/pw}\n    env:\n")
    target = agent.target(with_secret, agent_too=True)
    agent.host.secret_files["/etc/pw"] = "s3cret"
    way = agent.ask(target)
    assert isinstance(way, _observe.FromAgent), way
    key = secret_files.digest_key(str(agent.identity))
    assert way.environment.service("web").secrets[0].digest == secret_files.digest("pw", {"h1": b"s3cret"}, key)
    # A file the agent's environment does not name is not read for anybody.
    other = agent.ask(agent.target(with_secret.replace("/etc/pw", "/etc/shadow")))
    assert isinstance(other, _observe.Fallback) and "/etc/shadow" in other.why
    assert agent.host.calls["read_secret_file"] == 1


def test_no_socket_nobody_listening_and_a_silent_agent_are_fallbacks(agent, tmp_path):
    target = agent.target()
    pins = Path(target.known_hosts_file).read_bytes()
    missing = _observe.ask(tmp_path / "none.sock", target.environment, pins, routers=True, timeout=1)
    assert isinstance(missing, _observe.Fallback) and missing.why.startswith("no agent: no socket at")
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()  # the file stays, nobody listens: an agent that was killed
    refused = _observe.ask(dead, target.environment, pins, routers=True, timeout=1)
    assert isinstance(refused, _observe.Fallback) and refused.why.startswith("no agent listens on")
    silent = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(silent))
    listener.listen(1)
    try:
        slow = _observe.ask(silent, target.environment, pins, routers=True, timeout=0.3)
    finally:
        listener.close()
    assert isinstance(slow, _observe.Fallback) and "did not answer within 0.3s" in slow.why


@pytest.mark.parametrize("answer, why", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP answer from the agent: BadStatusLine"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n{\"api\": 1", "not an HTTP answer from the agent: IncompleteRead"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nnot", "the answer is not JSON"),
])
def test_something_on_the_socket_that_is_not_the_agent_is_a_fallback(agent, tmp_path, answer, why):
    target = agent.target()
    path = tmp_path / "other.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            asked = b""
            while b"\r\n\r\n" not in asked or len(asked.partition(b"\r\n\r\n")[2]) < int(
                    asked.lower().partition(b"content-length:")[2].split(b"\r\n")[0] or 0):
                asked += conn.recv(65536)
            conn.sendall(answer)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        got = _observe.ask(path, target.environment, Path(target.known_hosts_file).read_bytes(), routers=True, timeout=5)
    finally:
        server.join(10)
        listener.close()
    assert isinstance(got, _observe.Fallback) and got.why.startswith(why), got


def test_another_api_version_is_refused_and_the_socket_is_for_the_agents_user_and_group(agent):
    mode = stat.S_IMODE(api.socket_path(agent.state).stat().st_mode)
    assert mode == 0o660
    status, doc = _observe._exchange(api.socket_path(agent.state), "POST", f"/v1/environments/{ENV}/observe",
                                     json.dumps({"api": 1, "codec": 999, "shape": {}}).encode(), 5)
    assert status == 409 and "codec 999 asked" in doc["refused"]
    status, doc = _observe._exchange(api.socket_path(agent.state), "GET", "/v1/agent", b"", 5)
    assert status == 200 and doc["environments"] == [ENV] and doc["api"] == 1
    status, _ = _observe._exchange(api.socket_path(agent.state), "GET", "/v2/agent", b"", 5)
    assert status == 404
    status, doc = _observe._exchange(api.socket_path(agent.state), "POST", f"/v1/environments/{ENV}/observe", b"{", 5)
    assert status == 400 and doc["refused"].startswith("not JSON")
    status, doc = _observe._exchange(api.socket_path(agent.state), "POST", "/v1/environments/prod/observe",
                                     json.dumps({"api": 1, "codec": 1, "shape": {"environment": "prod"}}).encode(), 5)
    assert status == 409 and doc["refused"] == "prod: not an environment this agent reconciles"


@pytest.mark.parametrize("command", ["plan", "status"])
def test_plan_and_status_through_the_agent_load_no_ssh_nor_docker_library(agent, command):
    agent.run_web()
    probe = textwrap_probe(agent, command)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**_clean_env(), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "observed through the agent (pid" in done.stderr, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert [m for m in loaded if m.split(".")[0] in ("paramiko", "fabric", "invoke", "docker", "requests", "urllib3")] == []
    shown = json.loads("\n".join(done.stdout.strip().splitlines()[:-1]))
    assert shown["observed"]["via"] == "agent"
    if command == "plan":
        assert shown["in_sync"] is True
    else:
        assert [(r["host"], r["service"]) for r in shown["hosts"]] == [("h1", "web")]


def textwrap_probe(agent, command: str) -> str:
    argv = [command, "--repo", str(agent.repo_path), "--env", ENV, "--identity", str(agent.identity),
            "--state", str(agent.state), "--json"]
    return ("import json, sys\nfrom reconciler.cli.main import main\n"
            f"code = main({argv!r})\n"
            "from reconciler.adapters import lazyimports\n"
            "print(json.dumps(sorted(m for m, mod in sys.modules.items() if not lazyimports.is_deferred(mod))))\n"
            "sys.exit(0 if code in (0, 10) else code)\n")


def _clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")} | {"RECONCILER_CONFIG": ""}


def test_two_asks_at_once_are_served_at_once(agent):
    agent.run_web()
    target = agent.target()
    release = threading.Event()
    entered = []
    real = agent.host.observe

    def slow_observe():
        entered.append(1)
        release.wait(10)
        return real()

    agent.host.observe = slow_observe
    results = []
    threads = [threading.Thread(target=lambda: results.append(agent.ask(target))) for _ in range(2)]
    for t in threads:
        t.start()
    from tests.pushing import wait_for

    assert wait_for(lambda: len(entered) == 2, timeout=10, every=0.01)  # both inside an observation together
    release.set()
    for t in threads:
        t.join(10)
    assert [type(r) for r in results] == [_observe.FromAgent, _observe.FromAgent]


def test_an_agent_whose_socket_path_is_too_long_runs_without_its_api_and_says_so(tmp_path):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    said = []
    assert api.start(deep, Observer(deep, deep, None, lambda: []), lambda event, **f: said.append((event, f))) is None
    assert said[0][0] == "api-unavailable" and said[0][1]["socket"] == str(deep / "api.sock")
