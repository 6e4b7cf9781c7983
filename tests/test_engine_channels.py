"""Engine connections over a channel straight to the engine's socket
(``direct-streamlocal@openssh.com``), on a real OpenSSH sshd on loopback with
a small Engine API behind it (``tests/loopsshd.py``), and the fallback to
``docker system dial-stdio`` where the host's sshd will not open one.

Which way a connection went is read at the engine's end of the socket: the
process that connected is sshd itself for a streamlocal channel, the docker
CLI for dial-stdio.
"""

from __future__ import annotations

import functools
import logging

import paramiko
import pytest

from reconciler.adapters import dialstdio, ssh
from reconciler.adapters.hosts import DockerHost
from reconciler.adapters.ssh import connect
from reconciler.errors import HostUnreachable
from tests.loopsshd import VERSION, LoopbackSSHD
from tests.pushing import wait_for


# In-process hosts answer at once: look often.
wait_until = functools.partial(wait_for, timeout=30.0, every=0.02)


@pytest.fixture(scope="module")
def sshd():
    h = LoopbackSSHD()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def strict_sshd():
    """A host whose sshd says ``AllowStreamLocalForwarding no``."""
    h = LoopbackSSHD(allow_streamlocal=False)
    yield h
    h.stop()


def driver(h: LoopbackSSHD, **kwargs) -> DockerHost:
    a = h.access()
    return DockerHost("lo", connect(a), timeout=10.0, reconnect=lambda: connect(a), **kwargs)


def fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "paramiko.transport.lo" and "running `docker" in r.getMessage()]


def test_the_engine_api_works_over_a_channel_straight_to_its_socket(sshd, caplog):
    caplog.set_level(logging.WARNING)
    before = len(sshd.engine.peers)
    d = driver(sshd, docker_socket=str(sshd.engine_socket))
    try:
        assert d.ping() == VERSION
        assert d.observe().containers == ()
        assert d.engine_channels.via() == "streamlocal"
        # sshd itself connected to the engine: no process was started on the host.
        assert sshd.engine.peers[before:] == ["sshd"]
        assert "/containers/json" in sshd.engine.requests[-1]
    finally:
        d.close()
    assert fallback_lines(caplog) == []


def test_the_channel_opener_is_paramikos_own_machinery(sshd):
    """The raw helper: a channel whose bytes reach the socket, and the host's
    refusal as paramiko's ChannelException, the connection still usable."""
    conn = connect(sshd.access())
    try:
        channel = ssh.open_streamlocal(conn.transport, str(sshd.engine_socket), host="lo", what="test", timeout=10)
        channel.sendall(b"GET /v1.41/version HTTP/1.1\r\nHost: docker\r\n\r\n")
        channel.settimeout(10)
        assert channel.recv(4096).startswith(b"HTTP/1.1 200")
        channel.close()
        with pytest.raises(paramiko.ChannelException) as refused:
            ssh.open_streamlocal(conn.transport, "/nonexistent/engine.sock", host="lo", what="test", timeout=10)
        assert refused.value.code == paramiko.OPEN_FAILED_CONNECT_FAILED
        assert conn.transport.is_active()
    finally:
        conn.close()
    with pytest.raises(HostUnreachable, match="lo: test: the SSH connection is closed"):
        ssh.open_streamlocal(conn.transport, str(sshd.engine_socket), host="lo", what="test", timeout=10)


def test_a_host_that_refuses_the_channel_is_served_by_dial_stdio_with_one_log_line(strict_sshd, caplog):
    caplog.set_level(logging.WARNING)
    before = len(strict_sshd.engine.peers)
    d = driver(strict_sshd, docker_socket=str(strict_sshd.engine_socket))
    try:
        assert d.ping() == VERSION
        assert d.engine_channels.via() == "dial-stdio"
        # More engine connections on the same SSH connection: no second line.
        second = d.engine_channels()
        second.close()
        assert d.observe().containers == ()
        peers = strict_sshd.engine.peers[before:]
        assert peers and set(peers) == {"docker"}  # the docker CLI on the host connected, never sshd
    finally:
        d.close()
    lines = fallback_lines(caplog)
    assert len(lines) == 1, lines
    # It says what was refused, and what runs instead (for the socket the host entry names).
    assert str(strict_sshd.engine_socket) in lines[0] and "AllowStreamLocalForwarding no" in lines[0]
    assert f"docker -H unix://{strict_sshd.engine_socket} system dial-stdio" in lines[0]


def test_a_new_connection_tries_the_socket_again(strict_sshd, caplog):
    caplog.set_level(logging.WARNING)
    d = driver(strict_sshd, docker_socket=str(strict_sshd.engine_socket))
    try:
        assert d.ping() == VERSION
        d.reopen("a test")
        assert d.engine_channels.via() == "streamlocal"  # not yet refused on this connection
        assert d.ping() == VERSION
        assert d.engine_channels.via() == "dial-stdio"
    finally:
        d.close()
    assert len(fallback_lines(caplog)) == 2  # once per connection


def test_without_a_docker_socket_setting_the_default_socket_then_the_hosts_docker_cli(sshd, caplog, monkeypatch):
    """No socket at the default path (the sandbox: DOCKER_HOST in sshd's
    environment names the engine): dial-stdio as before, the CLI's choice."""
    monkeypatch.setattr(dialstdio, "DEFAULT_SOCKET", str(sshd.root / "no-engine-here.sock"))
    caplog.set_level(logging.WARNING)
    before = len(sshd.engine.peers)
    d = driver(sshd)
    try:
        assert d.engine_channels.socket == str(sshd.root / "no-engine-here.sock")
        assert d.ping() == VERSION
        assert d.engine_channels.via() == "dial-stdio"
        assert set(sshd.engine.peers[before:]) == {"docker"}
    finally:
        d.close()
    lines = fallback_lines(caplog)
    assert len(lines) == 1 and "running `docker system dial-stdio`" in lines[0], lines


def test_the_default_socket_is_the_engines_default():
    channels = dialstdio.EngineChannels("h", lambda: None)
    assert channels.socket == "/var/run/docker.sock" and channels.dial_stdio == "docker system dial-stdio"
    named = dialstdio.EngineChannels("h", lambda: None, docker_socket="/run/user/1000/docker.sock")
    assert named.dial_stdio == "docker -H unix:///run/user/1000/docker.sock system dial-stdio"


def test_an_engine_connection_the_engine_closed_is_not_reused_on_a_streamlocal_channel(sshd):
    """The pool's fix for dockerd's 300 s idle close, on the new channel: the
    engine closes the connection, sshd closes the channel, the pool skips it."""
    d = driver(sshd, docker_socket=str(sshd.engine_socket))
    try:
        assert d.ping() == VERSION
        before = len(sshd.engine.peers)
        assert sshd.engine.close_idle() >= 1
        # sshd passes the end on (EOF; the channel closes once we write to it).
        assert wait_until(lambda: all(c.eof_received or c.closed for c in list(d.transport._channels.values())))
        d.check(timeout=10.0)  # never retries: passes only if the closed channel was skipped
        assert sshd.engine.peers[before:] == ["sshd"]  # one new channel, straight to the socket
    finally:
        d.close()


def test_a_wrong_docker_socket_names_the_socket_and_the_host(sshd):
    """No socket there: sshd's refusal does not say why, so dial-stdio is
    tried for the same socket, and what it said on stderr is the error."""
    wrong = str(sshd.root / "wrong.sock")
    d = driver(sshd, docker_socket=wrong)
    try:
        with pytest.raises(HostUnreachable) as failed:
            d.ping()
        assert str(failed.value).startswith("lo: engine version: ")
        assert "the engine channel closed without an answer" in str(failed.value)
        assert wrong in str(failed.value), str(failed.value)
    finally:
        d.close()


def test_connect_on_its_own_socket_still_refuses_a_wrong_key_and_names_an_unreachable_host(sshd, tmp_path):
    """ssh.connect opens the TCP socket itself (TCP_NODELAY from the first
    packet): the pinned-key check and the errors are as before."""
    import dataclasses
    import socket as socketlib

    from reconciler.errors import HostKeyMismatch

    conn = connect(sshd.access())
    try:
        assert conn.transport.sock.getsockopt(socketlib.IPPROTO_TCP, socketlib.TCP_NODELAY) == 1
    finally:
        conn.close()
    other = paramiko.Ed25519Key.from_private_key_file(sshd.identity_file)  # not the host's key
    pins = tmp_path / "known_hosts"
    pins.write_text(f"[127.0.0.1]:{sshd.port} {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(HostKeyMismatch, match="lo: host key mismatch"):
        connect(dataclasses.replace(sshd.access(), known_hosts_file=str(pins)))
    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(HostUnreachable, match=f"lo: cannot reach 127.0.0.1:{closed_port} over SSH"):
        connect(dataclasses.replace(sshd.access(), port=closed_port, known_hosts_file=str(write_pin(tmp_path, closed_port, other))))


def write_pin(root, port, key):
    path = root / f"known_hosts-{port}"
    path.write_text(f"[127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n")
    return path


def test_a_command_fed_empty_input_gets_its_end_of_file(sshd, tmp_path):
    """Reproduced on the fleet: a router started from an image persisted an
    empty server state, the empty input went through ``Connection.run``
    (which never closes the remote's standard input), and ``cat >`` waited
    until the 30 s timeout.  Empty input is still fed, and ends."""
    from reconciler.adapters.router import Router, RouterAccess
    from reconciler.core import router as rt

    conn = connect(sshd.access())
    try:
        router = Router(conn, RouterAccess(host="lo", config_file=str(tmp_path / "haproxy.cfg"), reload_command="true",
                                           timeout=5.0), rt.Site(rt.RouterSettings(bind=":80")))
        target = sshd.root / "empty-state"
        assert router._exec(f"umask 077; cat > {target}", b"", "write server state") == (0, "")
        assert target.read_bytes() == b""
        assert router._exec(f"cat {target}; echo done", None, "read") == (0, "done")  # no input: not fed
    finally:
        conn.close()
