"""Reaching a database through a host's SSH connection (``database.via_host``).

Many teams' PostgreSQL listens only on a private network the agent cannot
route to, but a deploy host can.  ``Tunnel`` listens on an ephemeral
loopback port on the agent's machine and carries each client connection
(psycopg, pg_dump, pg_restore) through a ``direct-tcpip`` channel of the
host's existing, pinned SSH connection: no second connection, no key
handling of its own, nothing listening beyond loopback.

Each client connection asks for its channel when it arrives: given the
host's ``DockerHost``, a connection lost since the tunnel opened is reopened
first.  When a channel cannot be opened the client sees its connection
closed; ``failure`` then says why, naming the host and the target.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any, Callable

import paramiko

from psycopg.conninfo import make_conninfo

from reconciler.errors import HostUnreachable

_CHUNK = 65536


class Tunnel:
    """A loopback port forwarded to ``(address, port)`` as seen from the host.

    ``open_channel(dest, src)`` opens one ``direct-tcpip`` channel on the
    host's connection per client connection (the host driver's, which
    reopens a lost connection first)."""

    def __init__(self, open_channel: Callable[[tuple, tuple], Any], address: str, port: int, *, host: str) -> None:
        self.open_channel = open_channel
        self.target = (address, port)
        self.host = host
        self.failure: str | None = None  # why the last client's channel could not be opened
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.local_port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"db-tunnel-{host}", daemon=True)

    def __enter__(self) -> "Tunnel":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass

    def dsn(self, dsn: str) -> str:
        """``dsn`` pointed at this tunnel's loopback end."""
        return make_conninfo(dsn, host="127.0.0.1", port=str(self.local_port))

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        try:
            channel = self.open_channel(self.target, client.getpeername())
        except (HostUnreachable, paramiko.SSHException, EOFError, OSError) as exc:
            # The client (psycopg, pg_dump) sees its connection closed and
            # reports that; ``failure`` says what the tunnel tried.
            self.failure = str(exc) if isinstance(exc, HostUnreachable) else (
                f"{self.host}: channel to {self.target[0]}:{self.target[1]} for the database refused: {exc}")
            client.close()
            return
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([client, channel], [], [], 1.0)
                if client in ready:
                    data = client.recv(_CHUNK)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(_CHUNK)
                    if not data:
                        break
                    client.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            client.close()
