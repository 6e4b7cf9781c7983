"""``plan`` and ``status``: the hosts' state from the running agent, else observed here.

The CLI computes the plan (or the status rows) itself, from its own desired
state; only the observation of the hosts may come from the agent, which
keeps a connection to every host and observes on them at request time
(``agent.api``, ``agent.observer``).  The CLI sends the shape of its
environment (``core.observe_shape``: hosts, pins, router settings,
host-file secrets); the agent answers with every host's observation and
the secrets' digests, or refuses when the shape is not its own.

The agent is asked first, on ``api.sock`` in its state directory (found as
``status`` finds it: ``--state``, ``$RECONCILER_STATE``, the settings file,
the agent's pointer), and the one-shot observation (SSH to every host from
this process) is used instead when:

- there is no socket, or nobody listens on it (no agent, a stopped one);
- the connect takes over ``CONNECT_TIMEOUT``, or the answer over ``answer_timeout``;
- the agent refuses (409): not its environment, another shape, another
  API or codec version; or it answers something else than the API says;
- ``--no-agent``.

A host the agent could not observe is not a reason to fall back: its error
(502, the one-shot path's class, host and operation named) is raised as
if this process had met it.  Which way was taken is one line on stderr
(``observed through the agent (pid N)``, or over SSH and why) and a field of
``--json`` output.

Nothing here imports paramiko, fabric or docker (tests/test_agent_api.py
runs ``plan`` through an agent and looks at ``sys.modules``): this path's
cost is the interpreter, the desired state and one round trip.  The request
is ``http.client``'s, over the unix socket (its import, ssl and email among
it, costs ~16 ms: less than writing an HTTP client by hand would cost to keep).
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # the core is imported when asked, so that `plan --help` loads none of it
    from reconciler.core.model import Environment
    from reconciler.core.managed import ObservedHost

CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class FromAgent:
    hosts: dict[str, ObservedHost]
    environment: Environment  # the CLI's, with the agent's digests of host-file secrets
    pid: int
    commit: str  # the agent's branch head it observed with

    def line(self) -> str:
        return f"observed through the agent (pid {self.pid})"

    def json(self) -> dict:
        return {"via": "agent", "pid": self.pid, "agent_commit": self.commit}


@dataclass(frozen=True)
class Fallback:
    why: str

    def line(self) -> str:
        return f"observed over SSH from here ({self.why})"

    def json(self) -> dict:
        return {"via": "ssh", "why": self.why}


def add_agent_argument(parser) -> None:
    parser.add_argument("--no-agent", action="store_true",
                        help="observe the hosts from here over SSH, without asking the running agent")


def answer_timeout(ssh_timeout: float) -> float:
    """The agent may have to reconnect a host (an SSH connect) before it answers."""
    return max(30.0, 3 * ssh_timeout)


# ---------------------------------------------------------------- the decision (pure)


def decide(target_env: Environment, status: int, doc: Any, *, routers: bool = True) -> FromAgent | Fallback:
    """What an answer of the agent means for the CLI; raises the hosts' error (502)."""
    from reconciler.core import observe_shape
    from reconciler.core import observed_codec as codec

    if not isinstance(doc, Mapping):
        return Fallback(f"the agent answered {status} without a JSON object")
    if status == 502 and isinstance(doc.get("error"), Mapping):
        try:
            raise codec.decode_error(doc["error"])
        except codec.CodecError as exc:
            return Fallback(f"the agent's error is malformed: {exc}")
    if status == 409:
        return Fallback(f"the agent refused: {doc.get('refused')}")
    if status != 200:
        return Fallback(f"the agent answered {status}: {doc.get('refused')}")
    if doc.get("api") != codec.API_VERSION or doc.get("codec") != codec.VERSION:
        return Fallback(f"the agent speaks API {doc.get('api')} codec {doc.get('codec')}, "
                        f"this CLI {codec.API_VERSION} codec {codec.VERSION}")
    try:
        hosts = codec.decode_hosts(doc.get("hosts"))
        digests = {}
        for i, entry in enumerate(doc.get("secrets") or []):
            if not isinstance(entry, Mapping) or not all(isinstance(entry.get(k), str) for k in ("service", "name", "digest")):
                raise codec.CodecError(f"secrets[{i}]: expected {{service, name, digest}}")
            digests[(entry["service"], entry["name"])] = entry["digest"]
        pid, commit = doc.get("pid"), doc.get("commit")
        if not isinstance(pid, int) or not isinstance(commit, str):
            raise codec.CodecError("pid or commit missing")
    except codec.CodecError as exc:
        return Fallback(f"the agent's answer is malformed: {exc}")
    wanted = {h.name for h in target_env.hosts}
    if set(hosts) != wanted:
        return Fallback(f"the agent observed {sorted(hosts)}, not {sorted(wanted)}")
    try:
        environment = observe_shape.with_digests(target_env, digests)
    except KeyError as exc:
        return Fallback(f"the agent gave no digest for the host-file secret {exc.args[0]}")
    return FromAgent(hosts, environment, pid, commit)


# ---------------------------------------------------------------- the request


class _NoAnswer(Exception):
    """The agent could not be asked (no socket, refused, timed out, not HTTP)."""


def _exchange(path: Path, method: str, url: str, body: bytes, timeout: float) -> tuple[int, Any]:
    """One HTTP request (``http.client``) on the unix socket at ``path``; the status and the JSON body."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        """http.client's connection, to a unix socket instead of a TCP port."""

        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect(str(path))
            except BaseException:
                sock.close()
                raise
            sock.settimeout(timeout)
            self.sock = sock

    connection = UnixConnection("reconciler-agent", timeout=timeout)
    try:
        try:
            connection.connect()
        except FileNotFoundError:
            raise _NoAnswer(f"no agent: no socket at {path}") from None
        except ConnectionRefusedError:
            raise _NoAnswer(f"no agent listens on {path}") from None
        except PermissionError:
            raise _NoAnswer(f"{path}: permission denied (not the agent's user or group)") from None
        except OSError as exc:  # a timeout among them
            raise _NoAnswer(f"{path}: {exc or type(exc).__name__}") from None
        try:
            connection.request(method, url, body=body, headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            data = answer.read()  # http.client checks Content-Length: a cut answer raises IncompleteRead
        except http.client.HTTPException as exc:
            raise _NoAnswer(f"not an HTTP answer from the agent: {type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise _NoAnswer(f"the agent did not answer within {timeout:g}s") from None
        except OSError as exc:
            raise _NoAnswer(f"the agent's socket failed: {exc or type(exc).__name__}") from None
    finally:
        connection.close()
    try:
        return answer.status, json.loads(data)
    except ValueError as exc:
        raise _NoAnswer(f"the answer is not JSON: {exc}") from None


def ask(socket_path: Path, target_env: Environment, pins: bytes, *, routers: bool, timeout: float,
        meanwhile: Callable[[], object] | None = None) -> FromAgent | Fallback:
    """Ask the agent on ``socket_path`` to observe ``target_env``'s hosts now;
    ``meanwhile()`` runs on this thread while the agent observes (the
    planner's imports: the agent's few milliseconds are not waited for idle)."""
    import threading

    from reconciler.core import observe_shape
    from reconciler.core import observed_codec as codec

    request = {"api": codec.API_VERSION, "codec": codec.VERSION, "shape": observe_shape.shape(target_env, pins),
               "routers": routers}
    got: list = []

    def exchange() -> None:
        try:
            got.append(_exchange(socket_path, "POST", codec.observe_path(target_env.name),
                                 json.dumps(request).encode(), timeout))
        except _NoAnswer as exc:
            got.append(exc)

    asking = threading.Thread(target=exchange, name="ask-agent", daemon=True)
    asking.start()
    if meanwhile is not None:
        meanwhile()
    asking.join()
    if not got:  # the thread died of a bug: seen here, not hidden by a fallback
        raise AssertionError("asking the agent ended without an answer or a reason")
    if isinstance(got[0], _NoAnswer):
        return Fallback(str(got[0]))
    status, doc = got[0]
    return decide(target_env, status, doc, routers=routers)


def through_agent(args, target, *, routers: bool, meanwhile: Callable[[], object] | None = None) -> FromAgent | Fallback:
    """The agent's observation for ``target`` (``engine.target.Target``), or why not."""
    if getattr(args, "no_agent", False):
        return Fallback("--no-agent")
    from reconciler.cli.commands._agent import state_location
    from reconciler.core import observed_codec as codec
    from reconciler.errors import StalledError

    try:
        path = state_location(args).path / codec.SOCKET_NAME
    except StalledError as exc:  # a pointer naming a state directory that is gone: no agent there
        return Fallback(str(exc))
    pins = Path(target.known_hosts_file).read_bytes()
    return ask(path, target.environment, pins, routers=routers, timeout=answer_timeout(args.timeout), meanwhile=meanwhile)


def say(way: FromAgent | Fallback) -> None:
    print(way.line(), file=sys.stderr)
