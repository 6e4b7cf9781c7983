"""The observation codec: every field of every type crosses the wire and comes back equal;
a malformed document is refused naming where; errors come back as their own class."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reconciler import errors
from reconciler.core import observed_codec as codec
from reconciler.core.managed import ObservedContainer, ObservedHost
from reconciler.core.router import RouterView, ServerState

# Every field set to a value that is not its default, so a field the codec drops shows.
CONTAINER = ObservedContainer(id="c0ffee", name="prod-web", state="running",
                              labels=(("reconciler.environment", "prod"), ("x", "é ü")), image_id="sha256:ab",
                              health="healthy", restart_count=3, finished_at="2026-01-02T03:04:05Z", created=1700000000.5)
SERVER = ServerState(backend="web", name="web-1", address="172.31.1.2", port=8080, weight=100, admin=1, running=True,
                     check="L7OK 200", sessions=4, total=99, errors=2, backup=True)
ROUTER = RouterView(servers=(SERVER, dataclasses.replace(SERVER, name="web-2", running=False, backup=False)),
                    skeleton="sha256:skel", maps=(("weights", "web", "100"), ("pause", "web", "0")))
HOST = ObservedHost(name="h1", containers=(CONTAINER, dataclasses.replace(CONTAINER, id="b", name="other",
                                                                          health=None, labels=())),
                    images=("repo@sha256:1",), router=ROUTER)

# The fields the codec knows. A new field must be added to the codec, this list and VERSION.
KNOWN = {
    ObservedContainer: {"id", "name", "state", "labels", "image_id", "health", "restart_count", "finished_at", "created"},
    ServerState: {"backend", "name", "address", "port", "weight", "admin", "running", "check", "sessions", "total",
                  "errors", "backup"},
    RouterView: {"servers", "skeleton", "maps"},
    ObservedHost: {"name", "containers", "images", "router"},
}


def wire(doc):
    return json.loads(json.dumps(doc))  # what the socket carries: lists, not tuples


@pytest.mark.parametrize("cls", list(KNOWN), ids=lambda c: c.__name__)
def test_the_codec_names_every_field(cls):
    assert {f.name for f in dataclasses.fields(cls)} == KNOWN[cls]


@pytest.mark.parametrize("value, encode, decode", [
    (CONTAINER, codec.encode_container, codec.decode_container),
    (SERVER, codec.encode_server, codec.decode_server),
    (ROUTER, codec.encode_router, codec.decode_router),
    (HOST, codec.encode_host, codec.decode_host),
], ids=["container", "server", "router", "host"])
def test_round_trip_over_every_field(value, encode, decode):
    doc = wire(encode(value))
    assert set(doc) == KNOWN[type(value)]
    assert decode(doc) == value


def test_round_trip_of_a_host_without_router_nor_images_and_of_a_fleet():
    bare = ObservedHost("h2", (CONTAINER,), images=None, router=None)
    assert codec.decode_host(wire(codec.encode_host(bare))) == bare
    fleet = {"h1": HOST, "h2": bare}
    assert codec.decode_hosts(wire(codec.encode_hosts(fleet))) == fleet


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d["containers"][0].pop("state"), "host.containers[0].state: missing"),
    (lambda d: d["containers"][0].update(restart_count="3"), "host.containers[0].restart_count: expected int"),
    (lambda d: d["containers"][0].update(restart_count=True), "host.containers[0].restart_count: expected int"),
    (lambda d: d["containers"][0].update(labels=[["a"]]), "host.containers[0].labels[0]: expected 2 strings"),
    (lambda d: d["router"]["servers"][1].update(running=1), "host.router.servers[1].running: expected bool"),
    (lambda d: d["router"].update(maps=[["a", "b"]]), "host.router.maps[0]: expected 3 strings"),
    (lambda d: d.update(images="x"), "host.images: expected list"),
])
def test_a_malformed_document_is_refused_naming_where(mutate, where):
    doc = wire(codec.encode_host(HOST))
    mutate(doc)
    with pytest.raises(codec.CodecError, match="^" + where.replace("[", r"\[").replace("]", r"\]")):
        codec.decode_host(doc, "host")


def test_a_host_filed_under_another_name_is_refused():
    with pytest.raises(codec.CodecError, match="names host 'h1'"):
        codec.decode_hosts({"h2": wire(codec.encode_host(HOST))})


@pytest.mark.parametrize("exc", [
    errors.HostUnreachable("list containers: SSH connection failed: reset", host="h2"),
    errors.EngineError("list containers: 500 boom", host="h1"),
    errors.RouterError("router observe: no answer", host="h3"),
    errors.SecretUnreadable("read secret file /etc/pw: missing", host="h1"),
    errors.HostUnreachable("2 hosts failed:\nh1: x\nh2: y", host=None),
], ids=lambda e: type(e).__name__)
def test_errors_come_back_as_their_class_with_host_and_message(exc):
    back = codec.decode_error(wire(codec.encode_error(exc)))
    assert type(back) is type(exc) and back.host == exc.host and str(back) == str(exc)


def test_an_unlisted_error_comes_back_as_its_nearest_listed_kind_and_no_name_picks_another_class():
    class Odd(errors.TransientError):
        pass

    back = codec.decode_error(wire(codec.encode_error(Odd("x", host="h1"))))
    assert type(back) is errors.TransientError and str(back) == "h1: x"
    with pytest.raises(codec.CodecError, match="not an observation error"):
        codec.decode_error({"type": "InvalidDesiredState", "message": "x", "host": None})
