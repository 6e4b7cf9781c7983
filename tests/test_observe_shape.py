"""When the agent may answer for the CLI (core.observe_shape), and what the CLI
makes of each answer (cli.commands._observe.decide): pure, no I/O."""

from __future__ import annotations

import json
import textwrap

import pytest

from reconciler.cli.commands import _observe
from reconciler.core import observe_shape, observed_codec as codec
from reconciler.core import schema
from reconciler.core.managed import ObservedContainer, ObservedHost
from reconciler.core.schema import Snapshot
from reconciler.errors import HostUnreachable, SecretUnreadable

PINS = b"10.0.0.1 ssh-ed25519 AAAA\n"
ROUTER = 'router: {bind: ":8080", admin: "127.0.0.1:9901", config_file: "/etc/haproxy/{host}.cfg", reload: "true"}\n'


def env(*, router: str = ROUTER, h2: str = "10.0.0.2", secret: str = "/etc/app/db", web_hosts: str = "all",
        expose: bool = True, extra: str = ""):
    exposed = "    expose: {hosts: [web.test], port: 8080}\n" if expose else ""
    text = textwrap.dedent(f"""\
        hosts:
          h1: {{address: 10.0.0.1, user: deploy}}
          h2: {{address: {h2}}}
        policy: {{require_digest: false}}
        """) + router + textwrap.dedent(f"""\
        services:
          web:
            image: registry.example/web:v1
            hosts: {web_hosts}
            health: {{type: http, path: /, port: 8080}}
            secrets:
              - {{name: db-password, env: DB_PASSWORD, file: {secret}}}
        """) + exposed + extra
    snapshot = Snapshot(files={"environments/t/environment.yaml": text.encode(), "environments/t/known_hosts": PINS})
    return schema.load_environment(snapshot, "t")


def shape(e, pins=PINS):
    return json.loads(json.dumps(observe_shape.shape(e, pins)))  # as it arrives: JSON


def test_the_same_environment_is_answered_and_so_is_another_image():
    other_image = env(extra="  api:\n    image: registry.example/api:v9\n    hosts: [h1]\n")
    assert observe_shape.refusal(shape(env()), shape(env())) is None
    assert observe_shape.refusal(shape(env()), shape(other_image)) is None  # a new service is the plan's business


@pytest.mark.parametrize("theirs, says", [
    (lambda: shape(env(), pins=b"other\n"), "pinned host keys"),
    (lambda: shape(env(router=ROUTER.replace("9901", "9902"))), "router settings differ from the agent's: admin"),
    (lambda: shape(env(router="", expose=False)), "router settings differ"),
    (lambda: shape(env(h2="10.0.0.3")), "host h2: address: '10.0.0.3' asked, the agent's is '10.0.0.2'"),
    (lambda: shape(env(secret="/etc/app/other")), "host-file secret web/db-password (/etc/app/other on h1, h2)"),
    (lambda: shape(env(web_hosts="[h1]")), "host h2: site"),  # h2's router serves nothing: observed otherwise
    (lambda: {**shape(env()), "environment": "prod"}, "environment: 'prod' asked"),
    (lambda: {**shape(env()), "hosts": {"h9": {}}}, "host h9: not a host of the agent's environment"),
    (lambda: {**shape(env()), "hosts": {}}, "no hosts asked"),
    (lambda: {**shape(env()), "secrets": ["/etc/shadow"]}, "secrets: expected a list of"),
])
def test_a_shape_that_is_not_the_agents_is_refused_saying_why(theirs, says):
    why = observe_shape.refusal(shape(env()), theirs())
    assert why is not None and says in why, why


def test_fewer_hosts_are_answered_and_status_ignores_the_router():
    ours = shape(env())
    fewer = {**ours, "hosts": {"h1": ours["hosts"]["h1"]}}
    assert observe_shape.refusal(ours, fewer) is None
    changed = shape(env(router=ROUTER.replace("9901", "9902")))
    assert observe_shape.refusal(ours, changed, routers=False) is None
    assert observe_shape.refusal(ours, changed, routers=True) is not None


def test_digests_are_filled_into_the_host_file_secrets_only():
    e = env()
    filled = observe_shape.with_digests(e, {("web", "db-password"): "hmac-sha256:ab"})
    assert filled.service("web").secrets[0].digest == "hmac-sha256:ab"
    with pytest.raises(KeyError):
        observe_shape.with_digests(e, {})


# ---------------------------------------------------------------- what the CLI decides

CONTAINER = ObservedContainer("c1", "t-web", "running", (("reconciler.environment", "t"),))


def answer(**changes):
    hosts = {"h1": ObservedHost("h1", (CONTAINER,), None), "h2": ObservedHost("h2", (), None)}
    doc = {"api": codec.API_VERSION, "codec": codec.VERSION, "pid": 4242, "environment": "t", "commit": "ab" * 20,
           "hosts": codec.encode_hosts(hosts), "secrets": [{"service": "web", "name": "db-password", "digest": "hmac-sha256:cd"}]}
    doc.update(changes)
    return json.loads(json.dumps(doc))


def test_an_answer_is_used_with_its_digests_and_says_so():
    way = _observe.decide(env(), 200, answer())
    assert isinstance(way, _observe.FromAgent)
    assert way.hosts["h1"].containers == (CONTAINER,) and way.pid == 4242
    assert way.environment.service("web").secrets[0].digest == "hmac-sha256:cd"
    assert way.line() == "observed through the agent (pid 4242)"
    assert way.json() == {"via": "agent", "pid": 4242, "agent_commit": "ab" * 20}


@pytest.mark.parametrize("status, doc, says", [
    (409, {"refused": "the router settings differ"}, "the agent refused: the router settings differ"),
    (200, answer(codec=codec.VERSION + 1), "codec"),
    (200, answer(api=2), "the agent speaks API 2"),
    (200, answer(hosts={"h1": {"name": "h1"}}), "malformed"),
    (200, answer(secrets=[]), "no digest for the host-file secret"),
    (200, answer(hosts=codec.encode_hosts({"h1": ObservedHost("h1")})), "the agent observed ['h1']"),
    (500, {"refused": "agent error: KeyError"}, "the agent answered 500"),
    (200, ["not", "an", "object"], "without a JSON object"),
])
def test_the_cli_falls_back_on_anything_but_a_full_answer(status, doc, says):
    way = _observe.decide(env(), status, doc)
    assert isinstance(way, _observe.Fallback) and says in way.why, way
    assert way.json()["via"] == "ssh" and says in way.line()


@pytest.mark.parametrize("error", [HostUnreachable("list containers: SSH connection failed: reset", host="h2"),
                                   SecretUnreadable("read secret file /etc/app/db: missing", host="h1")])
def test_a_host_the_agent_could_not_observe_is_the_one_shot_error_not_a_fallback(error):
    with pytest.raises(type(error)) as raised:
        _observe.decide(env(), 502, {"error": codec.encode_error(error)})
    assert str(raised.value) == str(error) and raised.value.host == error.host
