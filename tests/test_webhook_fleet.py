"""Authenticated triggers on the real fleet (issue 12).

The team's repository is hosted elsewhere (a bare "forge" repository here);
the agent, its own process, works on its own bare clone with ``--remote``,
a fetch interval of an hour and ``--no-watch``: a push to the forge is news
to it only through the forge's webhook, which listens beyond loopback
(10.213.0.1) because it has a secret.

Forged deliveries (a wrong HMAC, none at all, a signature replayed on an
altered body, in GitHub ``X-Hub-Signature-256``, Gitea ``X-Gitea-Signature``
and GitLab ``X-Gitlab-Token`` styles) get 401 with the reason, a log line
each, and trigger nothing: no fetch, no run, no note, the host unchanged.
A correctly signed delivery in each style deploys the pushed commit.  The
nudge socket is writable by the repository's group only: a user outside it
cannot nudge, one in it can.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pygit2
import pytest

from reconciler.adapters import gitlog
from tests.agentproc import AgentProcess, log_events
from tests.envrepo import make_env_repo, remove_containers
from tests.pushing import git, wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "ztrusthook"
ADDRESS = "10.213.0.1"  # the sandbox bridge: beyond loopback, still on this machine
SECRET = b"trust-webhook-secret-5f3c9a01d2"
GROUP = "staff"


def service(fleet, tag: str) -> str:
    return f"""
    web:
      image: {fleet.images['v1']}
      hosts: [h2]
      env: {{RELEASE: {tag}}}
      health: {{type: running, interval: 300ms, successes: 1, deadline: 30s}}
      stop_timeout: 1s
    """


def free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return s.getsockname()[1]


@pytest.fixture
def world(fleet, tmp_path):
    remove_containers(fleet, f"{ENV}-")
    work = make_env_repo(tmp_path / "work", fleet, ENV)
    forge = tmp_path / "forge.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(forge))
    git(work.path, "remote", "add", "origin", str(forge))
    work.commit(service(fleet, "r1"), message="web r1")
    git(work.path, "push", "-q", "origin", "main")
    # The agent's side: a directory others may traverse (so that the
    # group test below means something), its clone in the group GROUP.
    side = Path(tempfile.mkdtemp(prefix="rcl-trust-"))
    side.chmod(0o755)
    agent_repo = side / "agent.git"
    git(tmp_path, "clone", "-q", "--bare", str(forge), str(agent_repo))
    gid = __import__("grp").getgrnam(GROUP).gr_gid
    for root, dirs, files in os.walk(agent_repo):
        for name in (root, *[os.path.join(root, f) for f in dirs + files]):
            os.chown(name, -1, gid)
    agent_repo.chmod(0o2775)
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_bytes(SECRET + b"\n")
    secret_file.chmod(0o600)
    yield fleet, work, forge, agent_repo, secret_file
    remove_containers(fleet, f"{ENV}-")
    subprocess.run(["rm", "-rf", "--", str(side)], check=False)


@contextlib.contextmanager
def h2(fleet):
    client = docker.DockerClient(base_url=f"unix://{fleet.host('h2').docker_socket}", version="1.41")
    try:
        yield client
    finally:
        client.close()


def active(fleet) -> tuple[str, str] | None:
    with h2(fleet) as client:
        for c in client.containers.list(filters={"name": f"{ENV}-web"}):
            if c.name == f"{ENV}-web" and c.status == "running":
                return c.id, c.labels.get("io.reconciler.revision")
    return None


def deliver(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{ADDRESS}:{port}/hook", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, f"{exc.reason} {exc.read().decode('utf-8', 'replace')}"


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def payload(commit: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"full_name": "ops/env"}}).encode()


def refusals(log: Path) -> list[dict]:
    return log_events(log, "webhook-refused")


def nudge_as(path: Path, gid: int) -> bool:
    """Send a nudge datagram as the user nobody with only ``gid`` (the system python, outside /root)."""
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n"
            "try:\n s.sendto(b'nudge from a test',sys.argv[1]); print('sent')\n"
            "except OSError as e: print('refused', e.errno)\n")
    done = subprocess.run(["setpriv", "--reuid=nobody", f"--regid={gid}", "--clear-groups", "/usr/bin/python3", "-I", "-c",
                           code, str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.startswith("sent")


def test_forged_webhooks_trigger_nothing_and_a_signed_one_deploys_the_pushed_commit(world, tmp_path):
    fleet, work, forge, agent_repo, secret_file = world
    port = free_port()
    log = tmp_path / "agent.log"
    agent = AgentProcess(agent_repo, ENV, fleet.identity_file, log, state=tmp_path / "state",
                         args=("--no-watch", "--remote", "origin", "--fetch-interval", "3600", "--webhook-port", str(port),
                               "--webhook-address", ADDRESS, "--webhook-secret-file", str(secret_file))).start()
    try:
        first = git(work.path, "rev-parse", "HEAD").stdout.strip()
        assert wait_for(lambda: (active(fleet) or ("", ""))[1] == first, 180), log.read_text()
        before = active(fleet)

        # The nudge socket: the agent's, writable by the repository's group only.
        sock = agent_repo / "reconciler.sock"
        info = os.stat(sock)
        gid = __import__("grp").getgrnam(GROUP).gr_gid
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o620, oct(info.st_mode)
        assert (info.st_uid, info.st_gid) == (os.getuid(), gid)
        assert not nudge_as(sock, __import__("grp").getgrnam("nogroup").gr_gid), "a user outside the group nudged the agent"
        assert nudge_as(sock, gid), "a member of the repository's group could not nudge"

        # A push to the forge: the agent does not know yet.
        second = work.commit(service(fleet, "r2"), message="web r2")
        git(work.path, "push", "-q", "origin", "main")
        body = payload(second)
        altered = payload("0" * 40)
        forged = [
            ("GitHub, wrong HMAC", {"X-Hub-Signature-256": "sha256=" + sign(body, b"not-the-secret")}, body,
             "X-Hub-Signature-256 does not match the body"),
            ("no signature at all", {}, body, "unsigned: no X-Hub-Signature-256"),
            ("GitHub, replayed on an altered body", {"X-Hub-Signature-256": "sha256=" + sign(body)}, altered,
             "X-Hub-Signature-256 does not match the body"),
            ("GitHub, sha1 scheme", {"X-Hub-Signature-256": "sha1=" + sign(body)}, body,
             "X-Hub-Signature-256 does not match the body"),
            ("Gitea, wrong HMAC", {"X-Gitea-Signature": sign(body, b"not-the-secret")}, body,
             "X-Gitea-Signature does not match the body"),
            ("Gitea, replayed on an altered body", {"X-Gitea-Signature": sign(body)}, altered,
             "X-Gitea-Signature does not match the body"),
            ("GitLab, wrong token", {"X-Gitlab-Token": "not-the-secret"}, body, "X-Gitlab-Token is not the shared token"),
            ("a good GitHub signature with a bad Gitea one", {"X-Hub-Signature-256": "sha256=" + sign(body),
                                                               "X-Gitea-Signature": sign(body, b"x")}, body,
             "X-Gitea-Signature does not match the body"),
        ]
        for what, headers, sent, reason in forged:
            status, said = deliver(port, sent, headers)
            assert status == 401 and reason in said, (what, status, said)
            time.sleep(1.1)  # the refusal log keeps one line a second: wait it out, so each has its own
        logged = wait_for(lambda: len(refusals(log)) >= len(forged) and refusals(log), 30) or pytest.fail(log.read_text())
        assert len(logged) == len(forged) and all(reason in e["reason"] for (*_, reason), e in zip(forged, logged)), logged
        assert all(e["client"] == ADDRESS for e in logged)

        time.sleep(3)  # room for a run that must not happen
        repo = pygit2.Repository(str(agent_repo))
        assert gitlog.branch_head(repo, "refs/heads/main") == first, "a forged delivery fetched"
        assert gitlog.attempts(repo, second) == () and gitlog.attempts(pygit2.Repository(str(forge)), second) == ()
        assert active(fleet) == before, "a forged delivery changed the host"
        assert log_events(log, "mirror-sync") == [] and not [e for e in log_events(log, "reconcile-begin") if e["commit"] != first[:12]]

        # Signed deliveries, one per forge's style, each deploy the commit pushed just before.
        headers_for = {
            "github": lambda b: {"X-Hub-Signature-256": "sha256=" + sign(b), "X-GitHub-Event": "push"},
            "gitlab": lambda b: {"X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event": "Push Hook"},
            "gitea": lambda b: {"X-Gitea-Signature": sign(b), "X-Gitea-Event": "push"},
        }
        commit = second
        for n, (style, headers) in enumerate(headers_for.items(), start=3):
            if n > 3:
                commit = work.commit(service(fleet, f"r{n}"), message=f"web r{n}")
                git(work.path, "push", "-q", "origin", "main")
            status, said = deliver(port, payload(commit), headers(payload(commit)))
            assert status == 202, (style, status, said)
            assert wait_for(lambda: (active(fleet) or ("", ""))[1] == commit, 180), (style, log.read_text())
            assert wait_for(lambda: getattr(gitlog.latest(pygit2.Repository(str(agent_repo)), commit, ENV), "result", None)
                            == "deployed", 60)
    finally:
        agent.stop()
    text = log.read_text()
    assert SECRET.decode() not in text and sign(payload(second)) not in text, "the secret or a valid signature is in the log"
