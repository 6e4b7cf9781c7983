"""The Engine API over SSH channels: docker-py's HTTP stack, each of its
connections one channel of the host's pinned connection, straight to the
engine's Unix socket (``direct-streamlocal@openssh.com``), or, where the host
does not allow that, running ``docker system dial-stdio`` on the host.

docker-py has the dial-stdio transport for ``ssh://`` URLs, but over a
paramiko client of its own (its own host key policy, ``~/.ssh/config``, port
22); here the channels come from a connection ``adapters.ssh`` opened with
the pinned key.  dial-stdio starts a process on the host per engine
connection (the login shell, its rc files, the docker CLI): 340-800 ms
before the first answer, measured on the sandbox; a streamlocal channel is
one round trip, and OpenSSH allows it unless ``AllowStreamLocalForwarding
no``.  ``EngineChannels`` picks one per connection (below).

dockerd closes an engine connection idle for 5 minutes (its HTTP server's
``ReadHeaderTimeout``; measured here: closed at 300.0 s), which ends
dial-stdio and closes the channel, or, on a streamlocal channel, makes sshd
close it.  docker-py's pool never looks at a pooled
channel before reusing it (it skips urllib3's test, which costs a pipe pair
per paramiko channel), so the first request after 5 idle minutes failed with
``('Connection aborted.', OSError('Socket is closed'))``: the agent's drift
interval is 5 minutes.  ``_DialStdioPool`` asks the channel itself.
"""

from __future__ import annotations

import logging
import queue
import shlex
import weakref
from typing import TYPE_CHECKING, Any, Callable

import docker
import paramiko
import requests.adapters
import requests.exceptions
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from docker.transport.basehttpadapter import BaseHTTPAdapter

from reconciler.adapters import ssh
from reconciler.errors import HostUnreachable

if TYPE_CHECKING:
    from fabric import Connection

# docker.io 20.10 speaks 1.41; asking for it explicitly avoids a version
# round trip before every client is usable.
API_VERSION = "1.41"
DIAL_STDIO = "docker system dial-stdio"
# Where dockerd listens unless told otherwise (its -H default).
DEFAULT_SOCKET = "/var/run/docker.sock"

# What a lost connection surfaces as: paramiko's errors under the channel, and
# those of the HTTP stack above it (a stream cut mid-pull is
# ChunkedEncodingError; a silent host is a read timeout).  Every requests
# error is an OSError, the engine's own answers (docker's APIError) too, so
# requests' errors are told apart by class: only these are the network's.
LOST_REQUESTS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
)
LOST_CONNECTION = (*ssh.SSH_FAILURES, urllib3.exceptions.ProtocolError, HostUnreachable)


def _finished(channel: Any) -> bool:
    """The host ended this channel (dial-stdio exited, the connection died)."""
    return channel.closed or channel.eof_received or channel.exit_status_ready()


def _complaint(channel: Any) -> str:
    """What a process on the channel said on stderr before it ended (dial-stdio
    names the socket it could not reach); empty for a streamlocal channel."""
    channel.status_event.wait(2.0)  # its exit comes after its stderr
    said = b""
    while channel.recv_stderr_ready() and len(said) < 4096:
        said += channel.recv_stderr(4096)
    return said.decode("utf-8", "replace").strip()


class _DialStdioConnection(urllib3.connection.HTTPConnection):
    """One HTTP connection to the engine: a channel to its socket, or running dial-stdio."""

    def __init__(self, open_channel: Callable[[], paramiko.Channel], timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._open_channel = open_channel

    def connect(self) -> None:
        self.sock = self._open_channel()

    def getresponse(self, *args, **kwargs):
        if self.sock is None:
            # Closed between request and response: urllib3 would fail with an
            # AttributeError ('NoneType' object has no attribute 'settimeout').
            raise ConnectionResetError("the engine channel closed before the response")
        channel = self.sock
        try:
            return super().getresponse(*args, **kwargs)
        except ConnectionResetError as exc:  # http.client's RemoteDisconnected among them
            said = _complaint(channel) if channel.exit_status_ready() or channel.closed else ""
            if not said:
                raise
            raise ConnectionResetError(f"the engine channel closed without an answer: {said}") from exc


class _DialStdioPool(urllib3.connectionpool.HTTPConnectionPool):
    scheme = "ssh"

    def __init__(self, open_channel: Callable[[], paramiko.Channel], timeout: float, maxsize: int) -> None:
        super().__init__("localhost", maxsize=maxsize)
        self._open_channel = open_channel
        self._channel_timeout = timeout

    def _new_conn(self) -> _DialStdioConnection:
        return _DialStdioConnection(self._open_channel, self._channel_timeout)

    def _get_conn(self, timeout: float | None = None):
        # urllib3 tests a pooled connection with select() on its fileno,
        # which makes paramiko open a pipe pair per channel; docker-py skips
        # the test and so reuses channels the host closed.  Ask the channel.
        if self.pool is None:
            raise urllib3.exceptions.ClosedPoolError(self, "Pool is closed.")
        try:
            conn = self.pool.get(block=self.block, timeout=timeout)
        except queue.Empty:
            conn = None
        if conn is not None and conn.sock is not None and _finished(conn.sock):
            conn.close()  # reconnects (a new channel) on its next request
        return conn or self._new_conn()


class _EngineAdapter(BaseHTTPAdapter):
    """requests' adapter for ``http+docker://ssh``: one pool of dial-stdio
    channels per host (docker-py keys pools by URL, so each endpoint would
    start one more dial-stdio on the host, 0.2-0.4 s apiece)."""

    __attrs__ = requests.adapters.HTTPAdapter.__attrs__ + ["pools", "timeout", "max_pool_size"]

    def __init__(self, open_channel: Callable[[], paramiko.Channel], timeout: float, max_pool_size: int = 4) -> None:
        self._open_channel = open_channel
        self.timeout = timeout
        self.max_pool_size = max_pool_size
        self.pools = urllib3._collections.RecentlyUsedContainer(1, dispose_func=lambda p: p.close())
        super().__init__()

    def get_connection(self, url, proxies=None):
        with self.pools.lock:
            pool = self.pools.get("engine")
            if pool is None:
                pool = _DialStdioPool(self._open_channel, self.timeout, self.max_pool_size)
                self.pools["engine"] = pool
        return pool


class EngineChannels:
    """Where one host's engine connections come from.

    A channel straight to ``docker_socket`` (the host entry's setting; the
    engine's default socket when it has none).  Where a connection's sshd
    will not open it, that connection runs dial-stdio instead, and says so
    once in its log (``paramiko.transport.<host>``, which the agent routes
    into its own lines); a new connection tries the socket again.  OpenSSH
    gives one answer, "open failed" (code 2), both for
    ``AllowStreamLocalForwarding no`` and for a socket it cannot connect to,
    so either way dial-stdio is tried: with the socket the host entry names
    (``docker -H unix://PATH``), else the host's docker CLI's own choice,
    which is what connections did before this channel existed
    (``DOCKER_HOST`` in sshd's environment, a context).  An SSH server
    without this channel kind (code 3) is answered the same way.
    """

    def __init__(self, host: str, transport: Callable[[], Any], *, docker_socket: str | None = None,
                 timeout: float = 60.0) -> None:
        self.host = host
        self.socket = docker_socket or DEFAULT_SOCKET
        self.named = docker_socket is not None
        self.timeout = timeout
        self._transport = transport
        self._refused_by: Callable[[], Any] = lambda: None  # the connection that runs dial-stdio

    @property
    def dial_stdio(self) -> str:
        if self.named:
            return f"docker -H {shlex.quote('unix://' + self.socket)} system dial-stdio"
        return DIAL_STDIO

    def via(self) -> str:
        """What the current connection's engine channels are: ``streamlocal`` or ``dial-stdio``."""
        refused = self._refused_by()
        return "dial-stdio" if refused is not None and refused is self._transport() else "streamlocal"

    def __call__(self) -> paramiko.Channel:
        transport = self._transport()
        if self._refused_by() is not transport:
            what = f"open an engine channel to {self.socket}"
            try:
                channel = ssh.open_streamlocal(transport, self.socket, host=self.host, what=what, timeout=self.timeout)
            except paramiko.ChannelException as exc:
                self._refused(transport, exc)
            else:
                channel.settimeout(self.timeout)
                return channel
        return self._run_dial_stdio(transport)

    def _refused(self, transport: Any, exc: paramiko.ChannelException) -> None:
        if exc.code not in (paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED, paramiko.OPEN_FAILED_CONNECT_FAILED,
                            paramiko.OPEN_FAILED_UNKNOWN_CHANNEL_TYPE):
            raise exc  # out of sessions: the caller's lost-connection handling
        self._refused_by = weakref.ref(transport)
        # Once per connection: each later engine channel on it runs dial-stdio.
        logging.getLogger(transport.get_log_channel()).warning(
            "engine connections: the host's sshd did not open a %s channel to %s (%s: "
            "AllowStreamLocalForwarding no, or no socket there; docker_socket in the host entry says where "
            "the engine listens); running `%s` on the host instead, a process per connection",
            ssh.STREAMLOCAL, self.socket, exc.text, self.dial_stdio)

    def _run_dial_stdio(self, transport: Any) -> paramiko.Channel:
        channel = ssh.open_channel(transport, host=self.host, what=f"open an engine channel ({self.dial_stdio})",
                                   timeout=self.timeout)
        channel.settimeout(self.timeout)
        channel.exec_command(self.dial_stdio)
        return channel


def engine_client(conn: Connection, *, host: str | None = None, timeout: float = 60.0,
                  docker_socket: str | None = None) -> docker.DockerClient:
    """A docker-py client whose every request travels over ``conn`` (for a
    quick look from Python; ``DockerHost`` also heals its connection)."""
    channels = EngineChannels(host or conn.host, lambda: conn.transport, docker_socket=docker_socket, timeout=timeout)
    return engine_client_over(channels, timeout=timeout)


def engine_client_over(open_channel: Callable[[], paramiko.Channel], *, timeout: float) -> docker.DockerClient:
    """A docker-py client whose connections are channels from ``open_channel``."""
    client = docker.DockerClient(base_url="unix:///nonexistent/reconciler.sock", version=API_VERSION)
    api = client.api
    adapter = _EngineAdapter(open_channel, timeout=timeout)
    api.adapters.pop("http+docker://", None)
    api.mount("http+docker://ssh", adapter)
    api._custom_adapter = adapter
    api.base_url = "http+docker://ssh"
    api.timeout = timeout
    return client
