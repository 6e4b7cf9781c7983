"""The Engine API over SSH channels: docker-py's HTTP stack, each of its
connections one channel running ``docker system dial-stdio`` on the host.

docker-py has this transport for ``ssh://`` URLs, but over a paramiko client
of its own (its own host key policy, ``~/.ssh/config``, port 22); here the
channels come from a connection ``adapters.ssh`` opened with the pinned key.

dockerd closes an engine connection idle for 5 minutes (its HTTP server's
``ReadHeaderTimeout``; measured here: closed at 300.0 s), which ends
dial-stdio and closes the channel.  docker-py's pool never looks at a pooled
channel before reusing it (it skips urllib3's test, which costs a pipe pair
per paramiko channel), so the first request after 5 idle minutes failed with
``('Connection aborted.', OSError('Socket is closed'))``: the agent's drift
interval is 5 minutes.  ``_DialStdioPool`` asks the channel itself.
"""

from __future__ import annotations

import queue
from typing import Any, Callable

import docker
import paramiko
import requests.adapters
import requests.exceptions
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from docker.transport.basehttpadapter import BaseHTTPAdapter
from fabric import Connection

from reconciler.adapters import ssh
from reconciler.errors import HostUnreachable

# docker.io 20.10 speaks 1.41; asking for it explicitly avoids a version
# round trip before every client is usable.
API_VERSION = "1.41"
DIAL_STDIO = "docker system dial-stdio"

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


class _DialStdioConnection(urllib3.connection.HTTPConnection):
    """One HTTP connection to the engine: a channel running dial-stdio."""

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
        return super().getresponse(*args, **kwargs)


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


def engine_client(conn: Connection, *, host: str | None = None, timeout: float = 60.0) -> docker.DockerClient:
    """A docker-py client whose every request travels over ``conn`` (for a
    quick look from Python; ``DockerHost`` also heals its connection)."""
    name = host or conn.host

    def dial_stdio() -> paramiko.Channel:
        channel = ssh.open_channel(conn.transport, host=name, what=f"open an engine channel ({DIAL_STDIO})", timeout=timeout)
        channel.settimeout(timeout)
        channel.exec_command(DIAL_STDIO)
        return channel

    return engine_client_over(dial_stdio, timeout=timeout)


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
