"""Connections that heal, on the real fleet, with the agent as a separate
process (``reconciler run``) and every change a ``git push`` into a bare
repository.

The agent keeps each host's connection between reconciles.  Each test breaks
those connections the way the trial saw them break, and then asserts, from
the agent's JSON log, the commits' notes and the hosts, that the next
reconcile converged on its first attempt and the agent was never restarted:

- a host's sshd restarted (the sandbox's own stop and start), with its
  sessions surviving, and with the agent's sessions ended too;
- a host that went down and came back, silently while the agent was idle,
  and loudly while a change was pending;
- the engine closing idle connections: dockerd ends an engine connection
  idle for 300 s (dial-stdio exits, the channel closes).  That time is the
  engine's, no setting of the agent's, so it is compressed by ending the
  agent's dial-stdio processes on the hosts (what dockerd's timeout does),
  and also waited for once, for real, in a test marked slow.

Processes are acted on only when they serve this test's agent: its own TCP
connections, the sshd sessions at the other end, their dial-stdio children.
Only the sandbox's sshd restart touches what every user of the fleet shares.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import docker
import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from reconciler.sandbox import sshd
from reconciler.sandbox.layout import layout
from tests.agentproc import AgentProcess
from tests.envrepo import make_env_repo, remove_containers, serving
from tests.pushing import git, wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def service(image: str, port: int, *, secret: Path | None = None, marker: str = "") -> str:
    secrets = f"\n      secrets: [{{name: heal-token, file: {secret}}}]" if secret else ""
    return f"""
    web:
      image: {image}
      hosts: all
      ports: ["{port}:8080"]
      env: {{MARKER: "{marker}"}}
      health: {{type: http, path: /health, interval: 500ms, successes: 2, deadline: 15s}}
      rollout: {{batch_size: 3}}
      stop_timeout: 2s{secrets}
    """


# ---------------------------------------------------------------- the agent, as a process

class Agent(AgentProcess):
    """Started at once; what its log and its notes say."""

    def __init__(self, bare: Path, env: str, identity: str, log: Path) -> None:
        super().__init__(bare, env, identity, log)
        self.repo = pygit2.Repository(str(bare))
        self.start()

    def ends(self, commit: str | None = None) -> list[dict]:
        return [e for e in self.events("reconcile-end") if commit is None or e.get("commit") == commit[:12]]

    def results(self, commit: str) -> list[str]:
        """Every attempt the commit's note records, oldest first."""
        return [a.result for a in gitlog.attempts(self.repo, commit, self.env)]

    def settled(self, commit: str) -> list[str] | None:
        results = self.results(commit)
        return results if results and results[-1] in ("deployed", "in-sync", "rolled-back", "refused", "failed") else None


def assert_first_attempt_deployed(agent: Agent, commit: str) -> None:
    assert wait_for(lambda: agent.settled(commit) and agent.ends(commit), timeout=180), agent.text()[-6000:]
    assert agent.results(commit) == ["deployed"], (agent.results(commit), agent.text()[-6000:])
    ends = agent.ends(commit)
    assert ends and ends[0]["result"] == "deployed" and ends[0].get("kind") is None, ends
    assert not agent.events("internal-error"), agent.events("internal-error")


def assert_json_lines_only(agent: Agent) -> None:
    """The agent's output is its JSON log and nothing else (no raw paramiko lines)."""
    assert agent.raw_lines() == [], agent.raw_lines()[:20]


# ---------------------------------------------------------------- what serves the agent on a host

def _ss(argv: list[str]) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


def agent_ports(agent_pid: int, address: str) -> set[int]:
    """The agent's local ports of its TCP connections to ``address``."""
    ports = set()
    for line in _ss(["ss", "-tnpH", "state", "established", "dst", address]):
        if f"pid={agent_pid}," in line:
            ports.add(int(line.split()[2].rsplit(":", 1)[1]))
    return ports


def sessions(netns: str, peer_ports: set[int]) -> set[int]:
    """The sshd processes on a host holding the connections from ``peer_ports``."""
    pids = set()
    for line in _ss(["nsenter", f"--net=/var/run/netns/{netns}", "ss", "-tnpH", "state", "established", "( sport = :22 )"]):
        if int(line.split()[3].rsplit(":", 1)[1]) in peer_ports:
            pids |= {int(p) for p in re.findall(r"pid=(\d+)", line)}
    return pids


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry))
    return out


def descendants(session_pids: set[int], mark: bytes) -> set[int]:
    """The processes those sessions run whose command line has ``mark``."""
    found, todo = set(), list(session_pids)
    while todo:
        for child in _children(todo.pop()):
            todo.append(child)
            try:
                if mark in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(child)
            except OSError:
                pass
    return found


def dial_stdios(session_pids: set[int]) -> set[int]:
    return descendants(session_pids, b"dial-stdio")


def agents_dial_stdios(agent: Agent, fleet) -> set[int]:
    pids = set()
    for h in fleet.hosts:
        pids |= dial_stdios(sessions(h.netns, agent_ports(agent.pid, h.address)))
    return pids


def kill(pids: set[int], sig=signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- a host that goes down

class Forwarder:
    """A loopback port standing in for one host's address (only this test's
    agent uses it), so that host can go down and come back for this agent
    alone.  ``crash()`` ends every session (the host's side is gone) and
    refuses new connections; loudly the agent gets a reset now, silently it
    hears nothing until ``boot()``, after which its next packet is reset, as
    a rebooted host does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._pairs: list[list] = []  # [client, upstream, mode]
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = False
        self.boot()
        threading.Thread(target=self._relay, daemon=True).start()

    def boot(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def crash(self, *, silent: bool = False) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for pair in self._pairs:
                pair[2] = "dead" if silent else "gone"
                _reset(pair[1])  # the host's end: its sshd session ends
                if not silent:
                    _reset(pair[0])

    def close(self) -> None:
        self._stop = True
        self.crash()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append([client, upstream, "relay"])

    def _relay(self) -> None:
        while not self._stop:
            with self._lock:
                pairs = [p for p in self._pairs if p[2] != "gone"]
                self._pairs = pairs
            watch = {}
            for p in pairs:
                watch[p[0]] = p
                if p[2] == "relay":
                    watch[p[1]] = p
            if not watch:
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select(list(watch), [], [], 0.05)
            except (OSError, ValueError):
                continue
            for sock in ready:
                pair = watch[sock]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if pair[2] == "dead":
                    if data and self._listener is not None:
                        pair[2] = "gone"
                        _reset(pair[0])
                    continue
                if not data:
                    pair[2] = "gone"
                    pair[0].close()
                    pair[1].close()
                    continue
                try:
                    (pair[1] if sock is pair[0] else pair[0]).sendall(data)
                except OSError:
                    pair[2] = "gone"


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


# ---------------------------------------------------------------- fixtures

@contextlib.contextmanager
def healing(fleet, tmp_path: Path, name: str):
    """An environment repository pushed to a bare one with the hooks, and a
    way to start the agent on it; containers removed afterwards."""
    made: dict = {"agents": [], "forwarders": []}
    remove_containers(fleet, f"{name}-")  # a run killed half-way may have left some

    def setup(hosts=None, *, dial_stdio: bool = False):
        if dial_stdio:
            # No docker_socket in the host entries: the engine is reached the
            # fallback way, through a `docker system dial-stdio` process per
            # connection (what these tests watch on the hosts).  The hosts
            # have no /var/run/docker.sock, so the direct channel is refused.
            hosts = [SimpleNamespace(name=h.name, address=h.address, port=h.port, user=h.user, docker_socket=None)
                     for h in (hosts or fleet.hosts)]
        sandbox = fleet if hosts is None else SimpleNamespace(hosts=hosts, identity_file=fleet.identity_file,
                                                              known_hosts_file=fleet.known_hosts_file)
        work = make_env_repo(tmp_path / "work", sandbox, name)
        if hosts is not None:
            keys = {line.split()[0]: line.split(None, 1)[1] for line in Path(fleet.known_hosts_file).read_text().splitlines() if line.strip()}
            real = {h.name: h.address for h in fleet.hosts}
            pins = [(f"[{h.address}]:{h.port}" if h.port != 22 else h.address) + " " + keys[real[h.name]] for h in hosts]
            (work.path / "environments" / name / "known_hosts").write_text("\n".join(pins) + "\n")
        bare = tmp_path / "env.git"
        git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
        assert main(["install-hooks", str(bare)]) == 0
        git(work.path, "remote", "add", "origin", str(bare))
        return work, bare

    def agent(bare: Path) -> Agent:
        a = Agent(bare, name, fleet.identity_file, tmp_path / "agent.log")
        made["agents"].append(a)
        return a

    def push(work, services: str, message: str, policy: str = "") -> str:
        commit = work.commit(services, message=message, policy=policy)
        git(work.path, "push", "-q", "origin", "main")
        return commit

    try:
        yield SimpleNamespace(name=name, setup=setup, agent=agent, push=push, made=made, tmp=tmp_path)
    finally:
        for a in made["agents"]:
            a.stop()
        for f in made["forwarders"]:
            f.close()
        remove_containers(fleet, f"{name}-")


@pytest.fixture
def heal(fleet, tmp_path, request):
    with healing(fleet, tmp_path, "heal" + request.node.name.replace("test_", "").replace("_", "")[:8]) as world:
        yield world


IDLE_TEST = "test_a_drift_check_after_more_than_the_engines_idle_timeout_finds_its_connections_working"
IDLE_PORT = 18604


@pytest.fixture(scope="session")
def idle_agent(fleet, tmp_path_factory):
    """The agent of the test that waits for dockerd's own 300 s idle timeout,
    begun with this module's first test so that those minutes pass while the
    rest of the suite runs (the test is marked ``late``: conftest runs it
    after every other test but those that take the sandbox down).  Its
    environment, containers and port are its own; no test disturbs what it
    watches (the agent's own connections and their dial-stdio processes)."""
    with contextlib.ExitStack() as stack:
        world = stack.enter_context(healing(fleet, tmp_path_factory.mktemp("healidle"), "healidle"))
        work, bare = world.setup(dial_stdio=True)
        v1 = world.push(work, service(fleet.images["v1"], IDLE_PORT, marker="1"), "web v1", policy="drift_interval: 330s")
        agent = world.agent(bare)
        assert_first_attempt_deployed(agent, v1)
        pooled = agents_dial_stdios(agent, fleet)
        # finish: the agent stopped and its containers removed by the test itself,
        # before the tests that take the sandbox down (a second close is a no-op).
        yield SimpleNamespace(agent=agent, v1=v1, pooled=pooled, since=time.monotonic(), finish=stack.close)


@pytest.fixture(autouse=True, scope="module")
def _begin_the_idle_wait(request):
    """Starts ``idle_agent`` with this module's first test, if its test is to run."""
    if any(item.name == IDLE_TEST for item in request.session.items):
        request.getfixturevalue("idle_agent")


def container_env(fleet, host_name: str, container: str) -> dict[str, str]:
    host = next(h for h in fleet.hosts if h.name == host_name)
    client = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41")
    try:
        env = client.containers.get(container).attrs["Config"]["Env"]
    finally:
        client.close()
    return dict(item.split("=", 1) for item in env)


def host_file(fleet, name: str) -> Path:
    """A file on the hosts (they share this machine's file system), in a directory of the deploy user's:
    the product reads it as that user (a pytest tmp_path is root's, mode 0700)."""
    import pwd

    user = pwd.getpwnam(fleet.hosts[0].user)
    folder = Path(fleet.state_dir) / "heal-secrets"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chown(folder, user.pw_uid, user.pw_gid)
    (folder / name).unlink(missing_ok=True)
    return folder / name


# ---------------------------------------------------------------- (a) sshd restarted

def test_after_a_hosts_sshd_restarts_the_next_reconcile_converges_on_its_first_attempt(fleet, heal):
    port = 18601
    secret = host_file(fleet, f"{heal.name}-token")
    secret.write_text("heal-secret-1\n")
    work, bare = heal.setup()
    v1 = heal.push(work, service(fleet.images["v1"], port, secret=secret, marker="1"), "web v1")
    agent = heal.agent(bare)
    assert_first_attempt_deployed(agent, v1)
    h1 = next(h for h in fleet.hosts if h.name == "h1")
    before = agent_ports(agent.pid, h1.address)
    assert before, "the agent keeps its connection to h1 between reconciles"

    # Restarted the way the sandbox starts it: its sessions live on, in
    # processes of the old sshd.
    lay = layout()
    sshd.stop(lay.host(1))
    sshd.ensure(lay.host(1), lay)
    v2 = heal.push(work, service(fleet.images["v2"], port, secret=secret, marker="2"), "web v2")
    assert_first_attempt_deployed(agent, v2)
    assert serving(fleet, port) == {h.name: "demo-web v2" for h in fleet.hosts}
    assert container_env(fleet, "h1", f"{heal.name}-web")["HEAL_TOKEN"] == "heal-secret-1"

    # Restarted so that the sessions end too (as when a host's init stops
    # sshd's whole process group): the agent's connection to h1 is gone.
    sessions_h1 = sessions(h1.netns, agent_ports(agent.pid, h1.address))
    assert sessions_h1
    sshd.stop(lay.host(1))
    kill(sessions_h1)
    sshd.ensure(lay.host(1), lay)
    secret.write_text("heal-secret-2\n")
    v3 = heal.push(work, service(fleet.images["v1"], port, secret=secret, marker="3"), "web v1 again")
    assert_first_attempt_deployed(agent, v3)
    assert serving(fleet, port) == {h.name: "demo-web v1" for h in fleet.hosts}
    assert container_env(fleet, "h1", f"{heal.name}-web")["HEAL_TOKEN"] == "heal-secret-2"
    assert not agent_ports(agent.pid, h1.address) & before, "h1 was reached through a new connection"

    # The session lives on but its SFTP subsystem ended (a restart that
    # stops the subsystem's process, an sshd ChannelTimeout): a session kept
    # for the next read would fail every read from now on.
    held = descendants(sessions(h1.netns, agent_ports(agent.pid, h1.address)), b"sftp")
    kill(held)
    secret.write_text("heal-secret-3\n")
    v4 = heal.push(work, service(fleet.images["v2"], port, secret=secret, marker="4"), "web v2 again")
    assert_first_attempt_deployed(agent, v4)
    assert container_env(fleet, "h1", f"{heal.name}-web")["HEAL_TOKEN"] == "heal-secret-3"
    assert held == set(), "no SFTP session outlives the read it was opened for"
    assert agent.proc.poll() is None
    assert_json_lines_only(agent)


# ---------------------------------------------------------------- (b) a host down and back

def test_a_host_down_and_back_the_agent_converges_without_a_restart(fleet, heal):
    port = 18602
    real_h2 = next(h for h in fleet.hosts if h.name == "h2")
    forwarder = Forwarder((real_h2.address, real_h2.port))
    heal.made["forwarders"].append(forwarder)
    hosts = [SimpleNamespace(name=h.name, address="127.0.0.1", port=forwarder.port, user=h.user, docker_socket=h.docker_socket)
             if h.name == "h2" else h for h in fleet.hosts]
    work, bare = heal.setup(hosts)
    v1 = heal.push(work, service(fleet.images["v1"], port, marker="1"), "web v1")
    agent = heal.agent(bare)
    assert_first_attempt_deployed(agent, v1)

    # Down and back while the agent was idle, without a word: its cached
    # connection to h2 looks alive and dies on first use.
    forwarder.crash(silent=True)
    forwarder.boot()
    v2 = heal.push(work, service(fleet.images["v2"], port, marker="2"), "web v2")
    assert_first_attempt_deployed(agent, v2)
    assert serving(fleet, port) == {h.name: "demo-web v2" for h in fleet.hosts}

    # Down while a change waits: the reconcile cannot reach h2 (transient,
    # naming h2, nothing changed); once h2 is back the retry converges.
    forwarder.crash()
    v3 = heal.push(work, service(fleet.images["v1"], port, marker="3"), "web v1 again")
    failed = wait_for(lambda: [e for e in agent.ends(v3) if e.get("kind") == "transient"], timeout=120)
    assert failed, agent.text()[-6000:]
    assert all("h2" in (e.get("message") or "") and e.get("reason") != "InternalError" for e in failed), failed
    assert serving(fleet, port) == {h.name: "demo-web v2" for h in fleet.hosts}  # nothing changed anywhere
    forwarder.boot()
    assert wait_for(lambda: agent.settled(v3), timeout=180), agent.text()[-6000:]
    assert agent.results(v3)[-1] == "deployed" and set(agent.results(v3)[:-1]) <= {"error"}, agent.results(v3)
    assert serving(fleet, port) == {h.name: "demo-web v1" for h in fleet.hosts}
    assert not agent.events("internal-error")
    assert agent.proc.poll() is None
    assert_json_lines_only(agent)


# ---------------------------------------------------------------- (c) idle connections the engine closed

def test_engine_connections_closed_while_idle_do_not_fail_the_next_drift_check(fleet, heal):
    port = 18603
    work, bare = heal.setup(dial_stdio=True)
    v1 = heal.push(work, service(fleet.images["v1"], port, marker="1"), "web v1", policy="drift_interval: 4s")
    agent = heal.agent(bare)
    assert_first_attempt_deployed(agent, v1)
    assert wait_for(lambda: len(agent.ends(v1)) >= 2, timeout=60)  # a drift check found it in sync

    for round_ in range(2):
        seen = len(agent.ends(v1))
        ports = {h.name: agent_ports(agent.pid, h.address) for h in fleet.hosts}
        pooled = agents_dial_stdios(agent, fleet)
        assert pooled, "the agent's engine connections are kept between drift checks"
        kill(pooled)  # they end, as when dockerd closes their connection (dial-stdio ignores SIGTERM)
        assert wait_for(lambda: not (agents_dial_stdios(agent, fleet) & pooled), timeout=30)
        assert wait_for(lambda: len(agent.ends(v1)) > seen, timeout=60), agent.text()[-4000:]
        after = agent.ends(v1)[seen]
        assert after["result"] == "in-sync" and after.get("kind") is None, after
        # Healed where it broke: new channels on the same SSH connections.
        assert {h.name: agent_ports(agent.pid, h.address) for h in fleet.hosts} == ports
    assert not [e for e in agent.ends(v1) if e.get("kind")], agent.ends(v1)
    assert_json_lines_only(agent)


@pytest.mark.late
def test_a_drift_check_after_more_than_the_engines_idle_timeout_finds_its_connections_working(fleet, idle_agent):
    """The real thing, once: dockerd's 300 s, waited for (about 6 minutes,
    most of them spent while the rest of the suite ran: ``idle_agent``)."""
    agent, v1, pooled = idle_agent.agent, idle_agent.v1, idle_agent.pooled
    try:
        assert pooled
        # The engine ends them on its own: the cause, seen on the hosts.
        assert wait_for(lambda: not (agents_dial_stdios(agent, fleet) & pooled), timeout=420, every=5)
        assert wait_for(lambda: len(agent.ends(v1)) >= 2, timeout=300, every=5), agent.text()[-4000:]
        drift = agent.ends(v1)[1]
        assert drift["result"] == "in-sync" and drift.get("kind") is None, drift
        assert agent.proc.poll() is None and not agent.events("internal-error")
        assert_json_lines_only(agent)
        print(f"dockerd's timeout passed {time.monotonic() - idle_agent.since:.0f}s after the deploy, mostly in other tests")
    finally:
        idle_agent.finish()
