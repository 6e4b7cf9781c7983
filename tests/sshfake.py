"""An SSH host in the test process, for fault injection on real paramiko.

``FakeSSHHost`` listens on 127.0.0.1 and speaks real SSH (paramiko's server
mode) with a pinned host key and one accepted client key, so the product's
``ssh.connect`` and ``hosts.DockerHost`` run unchanged against it.  Behind it:

- ``docker system dial-stdio`` channels answer a small Engine API (keep-alive
  HTTP/1.1: ``/version``, ``/containers/json``, container start/stop, a 500
  for container ``broken``, else 404), and ``close_idle_engine_connections()`` ends the idle ones the way
  dockerd does after 300 s idle (dial-stdio exits, the channel closes);
- an SFTP subsystem serving ``files`` (or none, with ``sftp=False``), and an
  exec of ``cat -- PATH`` serving the same files;
- a relay between each client socket and its server transport, so the network
  can fail: ``crash(silent=...)`` ends every session (the host went down;
  loudly with a reset, or silently: the client hears nothing until the host
  is back and answers its next packet with a reset) and refuses new
  connections until ``boot()``.

Only loopback addresses are used.
"""

from __future__ import annotations

import io
import json
import select
import shlex
import socket
import struct
import threading
import time
from pathlib import Path

import paramiko

ENGINE_VERSION = "fake-20.10"


class _Server(paramiko.ServerInterface):
    def __init__(self, host: "FakeSSHHost") -> None:
        self.host = host

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        ok = key.get_base64() == self.host.client_key.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        command = command.decode() if isinstance(command, bytes) else command
        self.host.execs.append(command)
        if command == "docker system dial-stdio":
            threading.Thread(target=self.host._engine, args=(channel,), daemon=True).start()
            return True
        argv = shlex.split(command)
        if argv[:2] == ["cat", "--"] and len(argv) == 3:
            threading.Thread(target=self.host._cat, args=(channel, argv[2]), daemon=True).start()
            return True
        return False


class _Files(paramiko.SFTPServerInterface):
    """Read-only SFTP over the host's ``files``."""

    def __init__(self, server, *args, **kwargs):
        super().__init__(server, *args, **kwargs)
        self.files = server.host.files
        server.host.sftp_sessions += 1

    def open(self, path, flags, attr):
        if path not in self.files:
            return paramiko.SFTP_NO_SUCH_FILE
        handle = paramiko.SFTPHandle(flags)
        handle.readfile = io.BytesIO(self.files[path])
        return handle

    def stat(self, path):
        if path not in self.files:
            return paramiko.SFTP_NO_SUCH_FILE
        attrs = paramiko.SFTPAttributes()
        attrs.st_size = len(self.files[path])
        return attrs

    lstat = stat


class _Pair:
    """One client connection: its socket, the server side, and what the network does to it."""

    def __init__(self, client: socket.socket, inner: socket.socket, transport: paramiko.Transport) -> None:
        self.client, self.inner, self.transport = client, inner, transport
        self.mode = "relay"  # relay | dead (the host forgot it) | gone


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class FakeSSHHost:
    def __init__(self, root: Path, *, sftp: bool = True, name: str = "f1") -> None:
        self.name = name
        self.sftp = sftp
        self.files: dict[str, bytes] = {}
        self.execs: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.engine_channels = 0
        self.sftp_sessions = 0
        self.connections = 0
        self._idle: set[paramiko.Channel] = set()
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self.host_key = paramiko.ECDSAKey.generate()
        self.client_key = paramiko.ECDSAKey.generate()
        root.mkdir(parents=True, exist_ok=True)
        self.identity_file = str(root / "id_ecdsa")
        self.client_key.write_private_key_file(self.identity_file)
        self._listener: socket.socket | None = None
        self.port = 0
        self.boot()
        self.known_hosts_file = str(root / "known_hosts")
        Path(self.known_hosts_file).write_text(
            f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n")
        self._relay_thread = threading.Thread(target=self._relay, daemon=True)
        self._stopping = False
        self._relay_thread.start()

    # ------------------------------------------------------------ faults
    def boot(self) -> None:
        """Answer on the (same) port again, as a host that came back."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def crash(self, *, silent: bool = False) -> None:
        """The host goes down: every session ends and new connections are
        refused until ``boot()``.  Loudly, clients get a reset now; silently,
        they hear nothing, and after ``boot()`` their next packet is reset."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the port is free again
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.mode = "dead" if silent else "gone"
            pair.inner.close()
            pair.transport.close()
            if not silent:
                _reset(pair.client)

    def close_idle_engine_connections(self) -> int:
        """End every engine connection waiting for its next request, as
        dockerd does after 300 s: dial-stdio exits, the channel closes."""
        with self._lock:
            idle, self._idle = list(self._idle), set()
        for channel in idle:
            channel.send_exit_status(0)
            channel.close()
        return len(idle)

    def stop(self) -> None:
        self._stopping = True
        self.crash()

    # ------------------------------------------------------------ plumbing
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            inner, outer = socket.socketpair()
            transport = paramiko.Transport(outer)
            transport.add_server_key(self.host_key)
            if self.sftp:
                transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _Files)
            pair = _Pair(client, inner, transport)
            with self._lock:
                self._pairs.append(pair)
                self.connections += 1
            # Channels are served from their exec and subsystem requests; the
            # transport keeps each accepted one referenced (never accept():
            # a dropped Channel object closes itself).
            try:
                transport.start_server(server=_Server(self))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    def _relay(self) -> None:
        while not self._stopping:
            with self._lock:
                pairs = [p for p in self._pairs if p.mode != "gone"]
            socks = {}
            for p in pairs:
                socks[p.client] = p
                if p.mode == "relay":
                    socks[p.inner] = p
            if not socks:
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select(list(socks), [], [], 0.05)
            except (OSError, ValueError):
                continue  # a socket was closed under us; look again
            for sock in ready:
                pair = socks[sock]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if pair.mode == "dead":
                    if data and self._listener is not None:
                        pair.mode = "gone"  # the rebooted host answers with a reset
                        _reset(pair.client)
                    continue
                other = pair.inner if sock is pair.client else pair.client
                if not data:
                    pair.mode = "gone"
                    for s in (pair.client, pair.inner):
                        try:
                            s.close()
                        except OSError:
                            pass
                    continue
                try:
                    other.sendall(data)
                except OSError:
                    pair.mode = "gone"

    # ------------------------------------------------------------ services
    def _engine(self, channel: paramiko.Channel) -> None:
        with self._lock:
            self.engine_channels += 1
        buf = b""
        channel.settimeout(0.1)
        while not channel.closed:
            if b"\r\n\r\n" not in buf:
                if not buf:
                    with self._lock:
                        self._idle.add(channel)
                try:
                    chunk = channel.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    self._idle.discard(channel)
                buf += chunk
                continue
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value.strip())
            while len(buf) < length:
                try:
                    buf += channel.recv(65536)
                except socket.timeout:
                    continue
            buf = buf[length:]
            path = target.split("?", 1)[0]
            self.requests.append((method, path))
            status, body = self._answer(method, path)
            payload = json.dumps(body).encode() if body is not None else b""
            reason = {200: "OK", 204: "No Content", 404: "Not Found", 500: "Internal Server Error"}[status]
            if b"\r\n\r\n" not in buf:
                with self._lock:  # idle from the moment the answer is on its way
                    self._idle.add(channel)
            try:
                channel.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                                f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            except OSError:
                return

    def _answer(self, method: str, path: str):
        parts = path.strip("/").split("/")[1:]  # without the /v1.41 prefix
        if method == "GET" and parts == ["version"]:
            return 200, {"Version": ENGINE_VERSION, "ApiVersion": "1.41"}
        if method == "GET" and parts == ["containers", "json"]:
            return 200, []
        if method == "POST" and len(parts) == 3 and parts[0] == "containers" and parts[2] in ("start", "stop"):
            return 204, None
        if parts[:2] == ["containers", "broken"]:
            return 500, {"message": "the engine failed"}
        return 404, {"message": f"no such object: {path}"}

    def _cat(self, channel: paramiko.Channel, path: str) -> None:
        time.sleep(0.01)  # let the exec's success reply go first
        if path in self.files:
            channel.sendall(self.files[path])
            channel.send_exit_status(0)
        else:
            channel.sendall_stderr(f"cat: {path}: No such file or directory\n".encode())
            channel.send_exit_status(1)
        channel.close()
