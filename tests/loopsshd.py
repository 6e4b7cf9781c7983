"""A real OpenSSH sshd on 127.0.0.1, and a small Engine API on a Unix socket
behind it, for the engine channels (``adapters.dialstdio.EngineChannels``).

``LoopbackSSHD`` runs ``/usr/sbin/sshd -D`` (so the test owns its pid) on a
free loopback port with its own host key, one accepted client key, and
``SetEnv DOCKER_HOST`` pointing the host's docker CLI at the fake engine, as
the sandbox does; ``allow_streamlocal=False`` writes
``AllowStreamLocalForwarding no``.

``FakeEngine`` answers ``/version`` and ``/containers/json`` over HTTP/1.1
keep-alive and records, for each connection, the command name of the process
at the other end of the socket (``SO_PEERCRED``): ``sshd`` for a
direct-streamlocal channel, ``docker`` for ``docker system dial-stdio``.
``close_idle()`` ends the connections waiting for a request, as dockerd does
after 300 s idle.  Needs root (sshd) and the docker CLI (the fallback).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

VERSION = "loopback-1"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as dockerd
    server: "FakeEngine._Server"

    def setup(self) -> None:
        super().setup()
        pid, _, _ = struct.unpack("3i", self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                struct.calcsize("3i")))
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            comm = "?"
        with self.server.engine.lock:
            self.server.engine.peers.append(comm)
            self.server.engine.open.add(self.request)

    def finish(self) -> None:
        with self.server.engine.lock:
            self.server.engine.open.discard(self.request)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0].rstrip("/")
        with self.server.engine.lock:
            self.server.engine.requests.append(path)
        if path.endswith("/version"):
            body = {"Version": VERSION, "ApiVersion": "1.41"}
        elif path.endswith("/containers/json"):
            body = []
        elif path.endswith("/_ping"):
            self._send(200, b"OK", "text/plain")
            return
        else:
            self._send(404, json.dumps({"message": f"no such object: {path}"}).encode())
            return
        self._send(200, json.dumps(body).encode())

    do_HEAD = do_GET

    def _send(self, status: int, payload: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Api-Version", "1.41")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


class FakeEngine:
    class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        engine: "FakeEngine"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.peers: list[str] = []  # one per connection: who connected
        self.requests: list[str] = []
        self.open: set[socket.socket] = set()
        self._server = self._Server(str(path), _Handler)
        self._server.engine = self
        os.chmod(path, 0o660)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close_idle(self) -> int:
        """End every open connection, as dockerd ends idle ones after 300 s."""
        with self.lock:
            conns = list(self.open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(conns)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackSSHD:
    def __init__(self, *, allow_streamlocal: bool = True) -> None:
        if os.geteuid() != 0:
            pytest.fail("these tests run a real sshd: run them as root", pytrace=False)
        if shutil.which("docker") is None:
            pytest.fail("the docker CLI is needed on this machine (the dial-stdio fallback runs it)", pytrace=False)
        # Short: a Unix socket's path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="rcl-sl-", dir="/tmp"))
        self.engine_socket = self.root / "engine.sock"
        self.engine = FakeEngine(self.engine_socket)
        self.port = _free_port()
        host_key, self.identity_file = self.root / "host_key", str(self.root / "id_ed25519")
        for key in (host_key, Path(self.identity_file)):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = self.root / "authorized_keys"
        authorized.write_text(Path(self.identity_file + ".pub").read_text())
        keytype, key = (host_key.with_suffix(".pub")).read_text().split()[:2]
        self.known_hosts_file = str(self.root / "known_hosts")
        Path(self.known_hosts_file).write_text(f"[127.0.0.1]:{self.port} {keytype} {key}\n")
        self.log = self.root / "sshd.log"
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {self.root / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "UsePAM no", "UseDNS no", "PrintMotd no", "StrictModes no",
            f"AllowStreamLocalForwarding {'yes' if allow_streamlocal else 'no'}",
            f"SetEnv DOCKER_HOST=unix://{self.engine_socket}", "",
        ]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(self.log)])
        self._wait_for_banner(deadline=time.monotonic() + 60)

    def _wait_for_banner(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"no SSH banner on 127.0.0.1:{self.port} within 60 s: {self.log.read_text()}")

    def access(self, name: str = "lo"):
        from reconciler.adapters.ssh import SSHAccess

        return SSHAccess(host=name, address="127.0.0.1", port=self.port, user="root",
                         identity_file=self.identity_file, known_hosts_file=self.known_hosts_file, timeout=10.0)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.engine.stop()
        shutil.rmtree(self.root, ignore_errors=True)
