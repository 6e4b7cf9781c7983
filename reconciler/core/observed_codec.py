"""Observations as JSON, and back: the typed codec the agent's API speaks.  Pure.

What ``plan_deploy`` and ``report.running_rows`` read of the hosts crosses a
process boundary when ``plan`` or ``status`` asks the running agent
(``agent.api``): an ``ObservedHost`` per host, with its containers
(``ObservedContainer``) and its router (``RouterView`` of ``ServerState``s).
Each type has its own ``encode_*``/``decode_*`` pair naming every field; a
decoder checks the type of every value and raises ``CodecError`` naming the
path of the first wrong one, so a malformed answer is refused, never half
read.  No pickle, no generic ``asdict``/``**kwargs``: a field added to one
of these dataclasses fails ``tests/test_observed_codec.py`` until the codec
(and ``VERSION``) say what it is on the wire.

Errors cross too: a host the agent could not observe comes back as the
``reconciler.errors`` class the one-shot path raises (``encode_error`` /
``decode_error``), never as a generic failure.

``VERSION`` is the wire format's; the CLI and the agent each send theirs,
and a difference is a refusal (the CLI then observes the hosts itself).
The API's own names are here too, for both sides: ``API_VERSION`` (the
``/v1/`` of every path), the socket's name in the agent's state directory,
and the paths.
"""

from __future__ import annotations

from typing import Any, Mapping

from reconciler import errors
from reconciler.core.managed import ObservedContainer, ObservedHost
from reconciler.core.router import RouterView, ServerState

VERSION = 1
API_VERSION = 1
SOCKET_NAME = "api.sock"  # in the agent's state directory
AGENT_PATH = f"/v{API_VERSION}/agent"


def observe_path(environment: str) -> str:
    """POST here: the agent observes the environment's hosts now (``agent.api``)."""
    return f"/v{API_VERSION}/environments/{environment}/observe"


class CodecError(ValueError):
    """A document that is not an encoded observation; the message names where."""


# ---------------------------------------------------------------- checked reads


def _get(doc: Mapping, key: str, kind, where: str, *, optional: bool = False):
    if not isinstance(doc, Mapping):
        raise CodecError(f"{where}: expected an object, got {type(doc).__name__}")
    if key not in doc:
        raise CodecError(f"{where}.{key}: missing")
    value = doc[key]
    if value is None and optional:
        return None
    # bool is an int in Python: a count must not be True, a flag must not be 1.
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CodecError(f"{where}.{key}: expected int, got {type(value).__name__}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodecError(f"{where}.{key}: expected a number, got {type(value).__name__}")
        return float(value)
    if not isinstance(value, kind):
        raise CodecError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CodecError(f"{where}: expected a list of strings")
    return tuple(value)


def _pairs(value: Any, where: str, width: int) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        raise CodecError(f"{where}: expected a list")
    out = []
    for i, item in enumerate(value):
        out.append(_strings(item, f"{where}[{i}]"))
        if len(out[-1]) != width:
            raise CodecError(f"{where}[{i}]: expected {width} strings")
    return tuple(out)


# ---------------------------------------------------------------- containers


def encode_container(c: ObservedContainer) -> dict:
    return {"id": c.id, "name": c.name, "state": c.state, "labels": [[k, v] for k, v in c.labels],
            "image_id": c.image_id, "health": c.health, "restart_count": c.restart_count,
            "finished_at": c.finished_at, "created": c.created}


def decode_container(doc: Any, where: str = "container") -> ObservedContainer:
    return ObservedContainer(
        id=_get(doc, "id", str, where), name=_get(doc, "name", str, where), state=_get(doc, "state", str, where),
        labels=_pairs(_get(doc, "labels", list, where), f"{where}.labels", 2),
        image_id=_get(doc, "image_id", str, where), health=_get(doc, "health", str, where, optional=True),
        restart_count=_get(doc, "restart_count", int, where), finished_at=_get(doc, "finished_at", str, where),
        created=_get(doc, "created", float, where))


# ---------------------------------------------------------------- routers


def encode_server(s: ServerState) -> dict:
    return {"backend": s.backend, "name": s.name, "address": s.address, "port": s.port, "weight": s.weight,
            "admin": s.admin, "running": s.running, "check": s.check, "sessions": s.sessions, "total": s.total,
            "errors": s.errors, "backup": s.backup}


def decode_server(doc: Any, where: str = "server") -> ServerState:
    return ServerState(
        backend=_get(doc, "backend", str, where), name=_get(doc, "name", str, where),
        address=_get(doc, "address", str, where), port=_get(doc, "port", int, where),
        weight=_get(doc, "weight", int, where), admin=_get(doc, "admin", int, where),
        running=_get(doc, "running", bool, where), check=_get(doc, "check", str, where),
        sessions=_get(doc, "sessions", int, where), total=_get(doc, "total", int, where),
        errors=_get(doc, "errors", int, where), backup=_get(doc, "backup", bool, where))


def encode_router(view: RouterView) -> dict:
    return {"servers": [encode_server(s) for s in view.servers], "skeleton": view.skeleton,
            "maps": [list(entry) for entry in view.maps]}


def decode_router(doc: Any, where: str = "router") -> RouterView:
    servers = _get(doc, "servers", list, where)
    return RouterView(
        servers=tuple(decode_server(s, f"{where}.servers[{i}]") for i, s in enumerate(servers)),
        skeleton=_get(doc, "skeleton", str, where, optional=True),
        maps=_pairs(_get(doc, "maps", list, where), f"{where}.maps", 3))


# ---------------------------------------------------------------- hosts


def encode_host(h: ObservedHost) -> dict:
    return {"name": h.name, "containers": [encode_container(c) for c in h.containers],
            "images": None if h.images is None else list(h.images),
            "router": None if h.router is None else encode_router(h.router)}


def decode_host(doc: Any, where: str = "host") -> ObservedHost:
    containers = _get(doc, "containers", list, where)
    images = _get(doc, "images", list, where, optional=True)
    router = _get(doc, "router", dict, where, optional=True)
    return ObservedHost(
        name=_get(doc, "name", str, where),
        containers=tuple(decode_container(c, f"{where}.containers[{i}]") for i, c in enumerate(containers)),
        images=None if images is None else _strings(images, f"{where}.images"),
        router=None if router is None else decode_router(router, f"{where}.router"))


def encode_hosts(observed: Mapping[str, ObservedHost]) -> dict:
    return {name: encode_host(observed[name]) for name in sorted(observed)}


def decode_hosts(doc: Any, where: str = "hosts") -> dict[str, ObservedHost]:
    if not isinstance(doc, Mapping):
        raise CodecError(f"{where}: expected an object")
    out = {}
    for name, host in doc.items():
        out[name] = decode_host(host, f"{where}.{name}")
        if out[name].name != name:
            raise CodecError(f"{where}.{name}: names host {out[name].name!r}")
    return out


# ---------------------------------------------------------------- errors

# The errors an observation can end with, and only those: a class name from
# the wire never picks anything else (and never a class whose constructor
# takes other arguments, like InvalidDesiredState's problems).
OBSERVATION_ERRORS: dict[str, type[errors.ReconcilerError]] = {
    cls.__name__: cls for cls in (
        errors.HostUnreachable, errors.EngineError, errors.RouterError, errors.RouterOwned,
        errors.SecretUnreadable, errors.HostKeyMismatch, errors.UnknownHostKey, errors.StalledError,
        errors.TransientError)
}


def encode_error(exc: errors.ReconcilerError) -> dict:
    """The class (or its nearest listed ancestor), the message without the host prefix, the host."""
    cls = next((c for c in type(exc).__mro__ if c.__name__ in OBSERVATION_ERRORS
                and OBSERVATION_ERRORS[c.__name__] is c), errors.StalledError)
    text = str(exc)
    if exc.host and text.startswith(f"{exc.host}: "):
        text = text[len(exc.host) + 2:]
    return {"type": cls.__name__, "message": text, "host": exc.host}


def decode_error(doc: Any, where: str = "error") -> errors.ReconcilerError:
    name = _get(doc, "type", str, where)
    cls = OBSERVATION_ERRORS.get(name)
    if cls is None:
        raise CodecError(f"{where}.type: {name!r} is not an observation error")
    return cls(_get(doc, "message", str, where), host=_get(doc, "host", str, where, optional=True))
