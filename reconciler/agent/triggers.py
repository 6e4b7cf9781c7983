"""What wakes the agent.  Triggers only say "look again"; they carry no plan.

- ``NudgeSocket``: a unix datagram socket the post-receive hook (and
  ``reconciler unlock``) sends one line to.  Datagrams suit a hook: sending
  never blocks on a slow agent, and fails at once when no agent listens.
- ``RefWatcher``: watchdog on the repository's refs, so a ref moved by any
  route (push, local commit, ``git fetch``, a pack-refs run) is seen.  Notes
  refs are ignored: the agent writes those itself.
- ``RemoteTracker``: optional; syncs with a hosted remote (``mirror.sync``)
  on a jittered interval and when poked by the ``Webhook``.

Each calls ``on_trigger(reason)`` from its own thread; the agent coalesces.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

OnTrigger = Callable[[str], None]
MAX_DATAGRAM = 4096


def default_socket_path(git_dir: str | os.PathLike[str]) -> Path:
    return Path(git_dir) / "reconciler.sock"


def send_nudge(path: str | os.PathLike[str], message: str = "nudge") -> bool:
    """Tell the agent listening at ``path`` to look again; False if none listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.sendto(message.encode()[:MAX_DATAGRAM], str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


class NudgeSocket:
    def __init__(self, path: str | os.PathLike[str], on_trigger: OnTrigger) -> None:
        self.path = Path(path)
        self.on_trigger = on_trigger
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.path.unlink()  # left by an agent that died; we are the only listener
        except FileNotFoundError:
            pass
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o660)  # pushers in the repository's group may nudge
        self._thread = threading.Thread(target=self._serve, name="nudge-socket", daemon=True)

    def start(self) -> "NudgeSocket":
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_DATAGRAM)  # blocks: no polling when idle
            except OSError:
                return  # closed by stop()
            if data == b"\0stop":
                return
            self.on_trigger("push:" + data.decode("utf-8", "replace").strip()[:200])

    def stop(self) -> None:
        send_nudge(self.path, "\0stop")
        self._thread.join(timeout=2)
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _is_ref_event(git_dir: Path, path: str) -> bool:
    rel = os.path.relpath(path, git_dir)
    if rel.endswith(".lock"):
        return False  # the rename that follows is the event that counts
    return rel in ("packed-refs", "HEAD", "FETCH_HEAD") or rel.startswith("refs" + os.sep + "heads") or rel.startswith("refs" + os.sep + "remotes")


class _Handler(FileSystemEventHandler):
    def __init__(self, git_dir: Path, on_trigger: OnTrigger) -> None:
        self.git_dir = git_dir
        self.on_trigger = on_trigger

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Reads (git itself opening HEAD) are events too on inotify; only
        # writes move a ref.
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "deleted"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "") or ""):
            if path and _is_ref_event(self.git_dir, os.fsdecode(path)):
                self.on_trigger("ref:" + os.path.relpath(os.fsdecode(path), self.git_dir))
                return


class RefWatcher:
    """Watches ``<git dir>/refs`` and ``packed-refs`` with inotify (via watchdog)."""

    def __init__(self, git_dir: str | os.PathLike[str], on_trigger: OnTrigger) -> None:
        self.git_dir = Path(git_dir).resolve()
        (self.git_dir / "refs" / "heads").mkdir(parents=True, exist_ok=True)
        self.observer = Observer()
        handler = _Handler(self.git_dir, on_trigger)
        self.observer.schedule(handler, str(self.git_dir / "refs"), recursive=True)
        self.observer.schedule(handler, str(self.git_dir), recursive=False)

    def start(self) -> "RefWatcher":
        self.observer.start()
        return self

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=2)


class RemoteTracker:
    """Sync with ``remote`` every ``interval`` seconds (+-20% jitter) and on ``poke``.

    ``reconciler.agent.mirror.sync`` fetches, fast-forwards local branches and
    pushes the agent's own commits and notes; a moved branch is then seen by
    the RefWatcher, so this class never triggers a reconcile itself.
    """

    def __init__(self, repo_path: str | os.PathLike[str], remote: str, interval: float, log: Callable[..., None]) -> None:
        self.repo_path = str(repo_path)
        self.remote = remote
        self.interval = interval
        self.log = log
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="remote-tracker", daemon=True)

    def start(self) -> "RemoteTracker":
        self._thread.start()
        return self

    def poke(self) -> None:
        self._poked.set()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        from reconciler.agent import mirror

        while not self._stop.is_set():
            try:
                mirror.sync(self.repo_path, self.remote, self.log)
            except Exception as exc:  # the next round tries again; a bad network is normal
                self.log("fetch-failed", remote=self.remote, error=str(exc))
            self._poked.wait(self.interval * random.uniform(0.8, 1.2))
            self._poked.clear()


class Webhook:
    """A loopback HTTP endpoint a hosting service's webhook (through a
    reverse proxy) calls: ``POST /hook`` pokes the remote tracker.

    It carries no payload into the agent: like every trigger, it only says
    "look again", so a forged call costs a fetch, nothing more.
    """

    def __init__(self, port: int, poke: Callable[[], None], address: str = "127.0.0.1") -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                if self.path.rstrip("/") != "/hook":
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(min(length, 1 << 20))
                poke()
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass  # the agent logs the fetch, not each request

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def start(self) -> "Webhook":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
