"""The SSH layer is fabric's: ``ssh.connect`` gives a ``fabric.Connection``
that trusts only the pinned key, and commands run through its ``run``
(``ssh.run``) with their output exactly as the host sent it, a lost
connection or a command past its timeout as ``HostUnreachable``.

Against in-process SSH hosts (``tests/sshfake.py``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import fabric
import paramiko
import pytest

from reconciler.adapters import ssh
from reconciler.adapters.hosts import DockerHost
from reconciler.adapters.ssh import SSHAccess, connect
from reconciler.errors import HostKeyMismatch, HostUnreachable
from tests.sshfake import FakeSSHHost


class _SlowHost(FakeSSHHost):
    """``cat -- /slow`` never ends (a command that hangs on the host)."""

    def _cat(self, channel, path):
        if path == "/slow":
            threading.Event().wait(30)
            return
        super()._cat(channel, path)


@pytest.fixture
def host(tmp_path):
    h = _SlowHost(tmp_path / "f1", sftp=False)
    yield h
    h.stop()


def access(h: FakeSSHHost, known_hosts: str | None = None) -> SSHAccess:
    return SSHAccess(host="f1", address="127.0.0.1", port=h.port, user="root", identity_file=h.identity_file,
                     known_hosts_file=known_hosts or h.known_hosts_file, timeout=3.0)


def test_a_connection_is_fabrics_trusting_only_the_pinned_key(host):
    conn = connect(access(host))
    try:
        assert isinstance(conn, fabric.Connection) and conn.is_connected
        assert isinstance(conn.client._policy, paramiko.RejectPolicy)  # fabric's own default is AutoAddPolicy
        assert list(conn.client.get_host_keys()) == [f"[127.0.0.1]:{host.port}"]
        assert conn.connect_kwargs["look_for_keys"] is False and conn.connect_kwargs["allow_agent"] is False
        assert ssh.identity_file(conn) == host.identity_file
    finally:
        conn.close()


def test_another_key_at_the_pinned_address_is_refused(host, tmp_path):
    other = paramiko.ECDSAKey.generate()
    pins = tmp_path / "other_known_hosts"
    pins.write_text(f"[127.0.0.1]:{host.port} {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(HostKeyMismatch):
        connect(access(host, str(pins)))
    assert pins.read_text().count("\n") == 1  # nothing remembered


def test_a_commands_output_is_exactly_the_bytes_the_host_sent(host):
    # invoke decodes each 1000-byte chunk on its own: a character cut
    # between chunks, or bytes that are no UTF-8, must still come back whole.
    text = ("x" + "é" * 1500 + "\n").encode()
    binary = bytes(range(256)) * 8
    host.files.update({"/text": text, "/binary": binary})
    conn = connect(access(host))
    try:
        assert ssh.run(conn, "cat -- /text", host="f1", what="read", timeout=5) == (0, text, b"")
        assert ssh.run(conn, "cat -- /binary", host="f1", what="read", timeout=5) == (0, binary, b"")
        code, out, err = ssh.run(conn, "cat -- /missing", host="f1", what="read", timeout=5)
        assert (code, out) == (1, b"") and b"No such file" in err
    finally:
        conn.close()


def test_a_secret_on_a_host_without_sftp_is_read_through_connection_run(host):
    host.files["/etc/app/token"] = "s3cret ü\n".encode()
    d = DockerHost("f1", connect(access(host)), timeout=5.0)
    try:
        assert d.read_secret_file("/etc/app/token") == "s3cret ü"
        assert host.execs[-1] == "cat -- /etc/app/token"
    finally:
        d.close()


def test_a_command_past_its_timeout_is_host_unreachable_naming_host_and_operation(host):
    conn = connect(access(host))
    try:
        with pytest.raises(HostUnreachable) as failed:
            ssh.run(conn, "cat -- /slow", host="f1", what="read the slow file", timeout=0.5)
        assert str(failed.value).startswith("f1: read the slow file: `cat -- /slow` did not finish within 0.5s")
        assert failed.value.kind == "transient"
    finally:
        conn.close()


def test_a_command_on_a_lost_connection_is_host_unreachable(host):
    conn = connect(access(host))
    try:
        host.crash()
        deadline = time.monotonic() + 20
        while conn.transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(HostUnreachable) as failed:
            ssh.run(conn, "cat -- /text", host="f1", what="read", timeout=5)
        assert str(failed.value).startswith("f1: read: ")
    finally:
        conn.close()
