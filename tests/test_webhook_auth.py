"""Authenticated triggers: the webhook checks the forge's signature; the nudge
socket is writable by the repository's group only (issue 12)."""

from __future__ import annotations

import grp
import hashlib
import hmac
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request

import pytest

from reconciler.agent import webhook_auth
from reconciler.agent.triggers import SOCKET_MODE, NudgeSocket, Webhook, send_nudge
from reconciler.errors import StalledError

SECRET = b"s3cret-token"
BODY = b'{"ref": "refs/heads/main"}'


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


# ------------------------------------------------------------ the checks


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": "sha256=" + sign(BODY)},
        {"X-Hub-Signature-256": "sha256=" + sign(BODY).upper()},
        {"X-Gitea-Signature": sign(BODY)},
        {"X-Gitea-Signature": sign(BODY), "X-Hub-Signature-256": "sha256=" + sign(BODY)},  # Gitea sends both
        {"X-Gitlab-Token": SECRET.decode()},
    ],
    ids=["github", "github-upper-hex", "gitea", "gitea-both", "gitlab"],
)
def test_a_correctly_signed_request_is_accepted(headers):
    assert webhook_auth.refusal(headers, BODY, SECRET) is None


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "unsigned"),
        ({"X-Hub-Signature": "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()}, "unsigned"),  # the old SHA-1 header alone
        ({"X-Hub-Signature-256": "sha256=" + sign(BODY, b"other")}, "X-Hub-Signature-256 does not match"),
        ({"X-Hub-Signature-256": "sha256=" + sign(BODY + b" ")}, "X-Hub-Signature-256 does not match"),
        ({"X-Hub-Signature-256": sign(BODY)}, "X-Hub-Signature-256 does not match"),  # no sha256= prefix
        ({"X-Hub-Signature-256": "sha1=" + sign(BODY)}, "X-Hub-Signature-256 does not match"),
        ({"X-Gitea-Signature": sign(BODY, b"other")}, "X-Gitea-Signature does not match"),
        ({"X-Gitea-Signature": ""}, "X-Gitea-Signature does not match"),
        # one good header does not excuse a forged one beside it
        ({"X-Gitea-Signature": sign(BODY), "X-Hub-Signature-256": "sha256=" + "0" * 64}, "X-Hub-Signature-256 does not match"),
        ({"X-Gitlab-Token": "s3cret-toke"}, "X-Gitlab-Token is not the shared token"),
        ({"X-Gitlab-Token": "s3cret-tokén"}, "X-Gitlab-Token is not the shared token"),
    ],
)
def test_an_unsigned_or_wrongly_signed_request_is_refused_with_the_reason(headers, reason):
    assert reason in webhook_auth.refusal(headers, BODY, SECRET)


def test_the_secret_file_is_read_and_refused_when_empty_or_readable_by_all(tmp_path):
    good = tmp_path / "secret"
    good.write_bytes(SECRET + b"\n")
    good.chmod(0o600)
    assert webhook_auth.read_secret(good) == SECRET
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    empty.chmod(0o600)
    with pytest.raises(StalledError, match="empty"):
        webhook_auth.read_secret(empty)
    good.chmod(0o644)
    with pytest.raises(StalledError, match="readable by everyone"):
        webhook_auth.read_secret(good)
    with pytest.raises(StalledError, match="cannot read"):
        webhook_auth.read_secret(tmp_path / "missing")


# ------------------------------------------------------ the live endpoint


def post(port: int, headers: dict[str, str], body: bytes = BODY, host: str = "127.0.0.1") -> int:
    request = urllib.request.Request(f"http://{host}:{port}/hook", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_webhook_refuses_forged_requests_with_401_and_a_log_line():
    poked = threading.Event()
    lines: list[tuple[str, dict]] = []
    hook = Webhook(0, poked.set, secret=SECRET, log=lambda event, **fields: lines.append((event, fields))).start()
    try:
        assert post(hook.port, {}) == 401
        assert lines == [("webhook-refused", {"client": "127.0.0.1", "reason": "unsigned: no X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token header"})]
        assert not poked.is_set()
        lines.clear()
        time.sleep(1.1)  # the refusal log is rate limited: wait out its interval before the next one
        assert post(hook.port, {"X-Hub-Signature-256": "sha256=" + sign(BODY, b"guess")}) == 401
        assert [event for event, _ in lines] == ["webhook-refused"] and "does not match" in lines[0][1]["reason"]
        assert not poked.is_set()
        assert post(hook.port, {"X-Hub-Signature-256": "sha256=" + sign(BODY)}) == 202
        assert poked.wait(5)
        poked.clear()
        assert post(hook.port, {"X-Gitlab-Token": SECRET.decode()}) == 202
        assert poked.wait(5)
    finally:
        hook.stop()


def test_a_flood_of_forged_requests_logs_one_line_a_second():
    lines: list[tuple[str, dict]] = []
    hook = Webhook(0, lambda: None, secret=SECRET, log=lambda event, **fields: lines.append((event, fields))).start()
    try:
        assert all(post(hook.port, {}) == 401 for _ in range(20))
    finally:
        hook.stop()
    assert 1 <= len(lines) < 20  # 20 requests on loopback take well under the 20 s they would need to log each


def test_the_webhook_listens_beyond_loopback_only_with_a_secret():
    with pytest.raises(StalledError, match="without a secret"):
        Webhook(0, lambda: None, address="0.0.0.0")
    with pytest.raises(StalledError, match="without a secret"):
        Webhook(0, lambda: None, address="10.213.0.1")
    bridge = "10.213.0.1"  # the sandbox's own bridge address on this machine, when the fleet is up
    try:
        probe = socket.socket()
        probe.bind((bridge, 0))
        probe.close()
    except OSError:
        pytest.skip(f"{bridge} is not an address of this machine (no sandbox bridge)")
    poked = threading.Event()
    hook = Webhook(0, poked.set, address=bridge, secret=SECRET).start()
    try:
        assert post(hook.port, {}, host=bridge) == 401
        assert post(hook.port, {"X-Gitea-Signature": sign(BODY)}, host=bridge) == 202
        assert poked.wait(5)
    finally:
        hook.stop()


def test_an_oversized_or_unsized_body_is_refused_before_it_is_read():
    hook = Webhook(0, lambda: None, secret=SECRET).start()
    try:
        with socket.create_connection(("127.0.0.1", hook.port), timeout=5) as conn:
            conn.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (webhook_auth.MAX_BODY + 1))
            assert b" 413 " in conn.recv(200)
        with socket.create_connection(("127.0.0.1", hook.port), timeout=5) as conn:
            conn.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 411 " in conn.recv(200)
    finally:
        hook.stop()


# ------------------------------------------------------- the nudge socket


def test_the_nudge_socket_is_writable_by_the_repositorys_group_only(tmp_path):
    repo = tmp_path / "env.git"
    repo.mkdir()
    group = next((g.gr_gid for g in grp.getgrall() if g.gr_gid not in (0, os.getgid())), None)
    if group is None:
        pytest.skip("no second group to give the repository")
    os.chown(repo, -1, group)  # the agent runs as root in the tests, so it may
    got: list[str] = []
    listener = NudgeSocket(repo / "reconciler.sock", got.append).start()
    try:
        info = os.stat(repo / "reconciler.sock")
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == SOCKET_MODE == 0o620
        assert info.st_gid == group
        assert [p.name for p in repo.iterdir()] == ["reconciler.sock"]  # no staging name left behind
        assert send_nudge(repo / "reconciler.sock", "refs/heads/main")
    finally:
        listener.stop()


def test_a_socket_elsewhere_takes_the_group_of_the_repository_it_serves(tmp_path):
    repo = tmp_path / "env.git"
    repo.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    group = next((g.gr_gid for g in grp.getgrall() if g.gr_gid not in (0, os.getgid())), None)
    if group is None:
        pytest.skip("no second group to give the repository")
    os.chown(repo, -1, group)
    listener = NudgeSocket(run / "agent.sock", lambda reason: None, repo_dir=repo).start()
    try:
        assert os.stat(run / "agent.sock").st_gid == group
    finally:
        listener.stop()
