"""The agent's API: HTTP with JSON bodies on a unix socket in its state directory.

The seed of the REST API: for now it answers what ``plan`` and ``status``
need to skip opening the hosts themselves (Argo CD's and Flux's CLIs ask
their controller the same way), over the connections the agent keeps::

    GET  /v1/agent                           {"api": 1, "codec": N, "pid": P, "environments": [...]}
    POST /v1/environments/ENV/observe        body {"api": 1, "codec": N, "shape": {...}, "routers": true}
         200  {"api", "codec", "pid", "environment", "commit", "hosts": {...}, "secrets": [...]}
         409  {"refused": why}   not this agent's shape (core.observe_shape), another codec or API version
         502  {"error": {...}}   a host could not be observed: the one-shot path's error (observed_codec)
         400, 404, 413, 500       {"refused": why}: a bad request, a bug (logged with its traceback)

Every observation is made at request time (``agent.observer``); the bodies
are ``core.observed_codec``'s typed JSON, never pickle.  Each request has
its own thread (``ThreadingMixIn``): serving never waits for the reconcile
loop, and the loop never waits for a request (they share host connections,
which two threads may use at once).

Who may ask: the socket is ``<state>/api.sock``, mode 0660, in the state
directory's group (the unit's ``reconciler`` group, as for ``locks/``):
the agent's user and that group, nobody else.  Bound under a temporary name
and renamed once its mode and group are right, like the nudge socket.
"""

from __future__ import annotations

import json
import os
import re
import socketserver
import threading
import traceback
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable

from reconciler.agent import shared_socket
from reconciler.core import observed_codec as codec
from reconciler.errors import ReconcilerError, StalledError

SOCKET_MODE = 0o660
MAX_BODY = 1 << 20
_OBSERVE = re.compile(rf"^/v{codec.API_VERSION}/environments/([A-Za-z0-9][A-Za-z0-9_.-]*)/observe$")


def socket_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / codec.SOCKET_NAME


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a request in progress does not hold the agent's exit


class ApiServer:
    """Serves ``observer`` (an ``agent.observer.Observer``) on ``path``."""

    def __init__(self, path: str | os.PathLike[str], observer, *, log: Callable[..., None] | None = None) -> None:
        self.path = Path(path)
        log = log or (lambda event, **fields: None)
        self.log = log
        self.server = shared_socket.publish(
            self.path, group=os.stat(self.path.parent).st_gid, mode=SOCKET_MODE,
            bind=lambda at: _Server(at, _handler(observer, log), bind_and_activate=True),
            close=lambda server: server.server_close(), what="API socket", whose="the state directory's group")
        self._thread = threading.Thread(target=self.server.serve_forever, name="api", daemon=True)

    def start(self) -> "ApiServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def start(state_dir: Path, observer, log: Callable[..., None]) -> ApiServer | None:
    """The API on ``<state>/api.sock``, or None (logged) where it cannot listen:
    the agent goes on, and ``plan`` observes the hosts itself."""
    path = socket_path(state_dir)
    try:
        return ApiServer(path, observer, log=log).start()
    except (OSError, StalledError) as exc:  # a path too long for AF_UNIX (108 bytes), a group it may not give
        log("api-unavailable", socket=str(path), error=str(exc))
        return None


def _handler(observer, log: Callable[..., None]) -> type[BaseHTTPRequestHandler]:
    from reconciler.agent.observer import Refused

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that sends its body slowly does not hold a thread for ever
        protocol_version = "HTTP/1.0"  # one request per connection: the CLI asks once

        def _send(self, status: int, doc: dict) -> None:
            body = json.dumps(doc, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _head(self) -> dict:
            return {"api": codec.API_VERSION, "codec": codec.VERSION, "pid": os.getpid()}

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path != codec.AGENT_PATH:
                self._send(404, {"refused": f"no such path {self.path}"})
                return
            self._send(200, {**self._head(), "environments": list(observer.environments())})

        def do_POST(self) -> None:  # noqa: N802
            match = _OBSERVE.match(self.path)
            if match is None:
                self._send(404, {"refused": f"no such path {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                self._send(411, {"refused": "Content-Length required"})
                return
            if not 0 <= length <= MAX_BODY:
                self._send(413, {"refused": f"body over {MAX_BODY} bytes"})
                return
            try:
                asked = json.loads(self.rfile.read(length))
            except ValueError as exc:
                self._send(400, {"refused": f"not JSON: {exc}"})
                return
            if not isinstance(asked, dict) or not isinstance(asked.get("shape"), dict):
                self._send(400, {"refused": "expected {api, codec, shape, routers}"})
                return
            if asked.get("api") != codec.API_VERSION or asked.get("codec") != codec.VERSION:
                self._send(409, {**self._head(), "refused": f"API {asked.get('api')} codec {asked.get('codec')} asked, "
                                                            f"the agent speaks API {codec.API_VERSION} codec {codec.VERSION}"})
                return
            env = match.group(1)
            try:
                answer = observer.observe(env, asked["shape"], routers=asked.get("routers") is not False)
            except Refused as exc:
                self._send(409, {**self._head(), "refused": str(exc)})
            except ReconcilerError as exc:
                self._send(502, {**self._head(), "error": codec.encode_error(exc)})
            except Exception as exc:  # a bug must not end the agent: logged, answered, and the CLI observes itself
                log("api-internal-error", environment=env, error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc())
                self._send(500, {**self._head(), "refused": f"agent error: {type(exc).__name__}: {exc}"})
            else:
                self._send(200, {**self._head(), **answer})

        def log_message(self, *args) -> None:
            pass  # the observer logs each observation; the stdlib's line per request is noise

    return Handler
