"""What wakes the agent.  Triggers only say "look again"; they carry no plan.

- ``NudgeSocket``: a unix datagram socket the post-receive hook (and
  ``reconciler unlock``) sends one line to.  Datagrams suit a hook: sending
  never blocks on a slow agent, and fails at once when no agent listens.
- ``RefWatcher``: watchdog on the repository's refs, so a ref moved by any
  route (push, local commit, ``git fetch``, a pack-refs run) is seen.  Notes
  refs are ignored: the agent writes those itself.
- ``RemoteTracker``: optional; syncs with a hosted remote (``mirror.sync``)
  on a jittered interval and when poked by the ``Webhook``.
- ``Webhook``: ``POST /hook`` from a forge.  With a secret it checks the
  forge's signature (``webhook_auth``) and may listen beyond loopback;
  without one it stays on loopback (behind a proxy that authenticates).

Each calls ``on_trigger(reason)`` from its own thread; the agent coalesces.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler.agent import shared_socket, webhook_auth
from reconciler.errors import StalledError

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


# Owner (the agent, which sends itself the stop datagram) and the
# repository's group (pushers, whose post-receive hook nudges) may write;
# nobody else may, and nobody needs to read a socket file.
SOCKET_MODE = 0o620


class NudgeSocket:
    """``repo_dir``: the git directory whose group may nudge (default: the
    socket's directory, which is the git dir for the default path)."""

    def __init__(self, path: str | os.PathLike[str], on_trigger: OnTrigger, repo_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.on_trigger = on_trigger
        group = os.stat(repo_dir if repo_dir is not None else self.path.parent).st_gid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        shared_socket.publish(self.path, group=group, mode=SOCKET_MODE, bind=lambda at: self.sock.bind(at) or self.sock,
                              close=lambda s: s.close(), what="nudge socket", whose="the repository's group",
                              hint="; run the agent as a member of that group")
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
    pushes the agent's own commits and notes.  A branch the sync moved is a
    trigger (``on_trigger("fetch:<remote>")``): the RefWatcher sees it too,
    but an agent run with ``--no-watch`` (a long poll, or a webhook as the
    only news) must still deploy what the fetch brought; the agent
    coalesces the two.
    """

    def __init__(self, repo_path: str | os.PathLike[str], remote: str, interval: float, log: Callable[..., None],
                 on_trigger: OnTrigger | None = None) -> None:
        self.repo_path = str(repo_path)
        self.remote = remote
        self.interval = interval
        self.log = log
        self.on_trigger = on_trigger
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
        import traceback

        import pygit2

        from reconciler.agent import mirror

        while not self._stop.is_set():
            try:
                moved = [r for r in mirror.sync(self.repo_path, self.remote, self.log) if r.action in mirror.MOVED]
            except (pygit2.GitError, OSError) as exc:  # the next round tries again; a bad network is normal
                self.log("fetch-failed", remote=self.remote, error=str(exc))
                moved = []
            except Exception as exc:
                # A bug, not the network: said as one, with its traceback; the
                # tracker thread goes on (the agent must not lose its remote).
                self.log("internal-error", remote=self.remote, error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc())
                moved = []
            if moved and self.on_trigger is not None:
                self.on_trigger(f"fetch:{self.remote}")
            self._poked.wait(self.interval * random.uniform(0.8, 1.2))
            self._poked.clear()


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, it is not known to be loopback


class Webhook:
    """``POST /hook`` from a hosting service pokes the remote tracker.

    It carries no payload into the agent: like every trigger, it only says
    "look again".  With ``secret`` (the bytes of ``--webhook-secret-file``,
    see ``webhook_auth.read_secret``) every request must carry a valid GitHub,
    Gitea or GitLab signature, else it is answered 401 and logged; only then
    may it listen beyond loopback.  Without a secret it listens on loopback
    only (a reverse proxy in front authenticates), as before.
    """

    def __init__(self, port: int, poke: Callable[[], None], address: str = "127.0.0.1", *,
                 secret: bytes | None = None, log: Callable[..., None] | None = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        if secret is None and not _is_loopback(address):
            raise StalledError(f"webhook: refusing to listen on {address}:{port} without a secret; "
                               "pass --webhook-secret-file, or listen on 127.0.0.1 behind a proxy that authenticates")
        if secret is not None and not secret:
            raise StalledError("webhook: the secret is empty")
        refusals = _RateLimitedLog(log or (lambda event, **fields: None))

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that sends its body slowly does not hold a thread

            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                if self.path.rstrip("/") != "/hook":
                    self.send_error(404)
                    return
                try:
                    length = int(self.headers.get("Content-Length") or "")
                except ValueError:
                    self.send_error(411)
                    return
                if not 0 <= length <= webhook_auth.MAX_BODY:
                    self.send_error(413)
                    return
                body = self.rfile.read(length)
                if secret is not None:
                    refusal = webhook_auth.refusal(self.headers, body, secret)
                    if refusal is not None:
                        refusals.log("webhook-refused", client=self.client_address[0], reason=refusal)
                        self.send_error(401, refusal)
                        return
                poke()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass  # the agent logs the fetch and the refusals, not each request

        server_class = ThreadingHTTPServer
        if ":" in address:
            server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self.server = server_class((address, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def start(self) -> "Webhook":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _RateLimitedLog:
    """At most one refusal line a second: a flood of forged requests must not
    flood the agent's log.  The next line counts those left out."""

    def __init__(self, log: Callable[..., None], interval: float = 1.0) -> None:
        self._log, self._interval = log, interval
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._skipped = 0

    def log(self, event: str, **fields) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval:
                self._skipped += 1
                return
            self._last, skipped, self._skipped = now, self._skipped, 0
        self._log(event, **fields, **({"not_logged_before": skipped} if skipped else {}))
