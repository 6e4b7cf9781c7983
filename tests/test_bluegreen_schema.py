"""The router parts of the format: ``router:``, ``expose:``, the blue-green rollout, each host's site."""

from __future__ import annotations

import pytest

from reconciler.core import model
from reconciler.core import router as rt
from reconciler.core.schema import load_environment, validate
from schema_helpers import DIGEST, env_with, snapshot

ROUTER = """\
router:
  bind: "{address}:80"
  admin: 127.0.0.1:9901
  config_file: /srv/{host}/haproxy.cfg
  reload: "kill -USR2 $(cat /srv/{host}/haproxy.pid)"
  socket: /srv/{host}/admin.sock
  state_file: /srv/{host}/state
  log: stdout
"""


def web(extra: str = "", expose: str = "{hosts: [shop.example.com], path: /api, port: 8080}") -> str:
    return f"""\
  web:
    image: registry.example:5000/demo/web:v1@{DIGEST}
    hosts: [web]
    expose: {expose}
    health: {{type: http, path: /health, successes: 3, deadline: 20s}}
{extra}"""


def load(text: str) -> model.Environment:
    return load_environment(snapshot(env=text), "test")


def problems(text: str) -> list[str]:
    return validate(snapshot(env=text), "test")


def test_an_exposed_service_and_the_router_load_into_the_model():
    env = load(env_with(web("    rollout: {batch_size: 2}\n",
                            expose="{hosts: [shop.example.com], path: /api, port: 8080, drain: 5s}"), top=ROUTER))
    service = env.service("web")
    assert service.expose == model.Expose(8080, ("shop.example.com",), "/api", 5.0)
    assert service.strategy == "blue-green" and service.rollout == model.Rollout(2, "auto")
    assert service.ports == () and service.health.port == 8080  # the check goes to the exposed port
    assert env.router == model.RouterConfig(bind="{address}:80", admin="127.0.0.1:9901", config_file="/srv/{host}/haproxy.cfg",
                                            reload="kill -USR2 $(cat /srv/{host}/haproxy.pid)",
                                            socket="/srv/{host}/admin.sock", state_file="/srv/{host}/state", log="stdout")
    # One site per host, with the host's own values filled in.
    site = rt.site_for(env, "h2")
    assert site.settings == rt.RouterSettings(bind="10.0.0.2:80", admin="127.0.0.1:9901", socket="/srv/h2/admin.sock",
                                              state_file="/srv/h2/state", log="stdout", files="/srv/h2/reconciler")
    assert site.exposures == (rt.Exposure("web", 8080, ("shop.example.com",), "/api",
                                          rt.RouterCheck("http", "/health", 200, None, 1.0, 2.0, 3, 2)),)
    assert rt.access_fields(env.router, env.host("h1")) == {
        "config_file": "/srv/h1/haproxy.cfg", "reload_command": "kill -USR2 $(cat /srv/h1/haproxy.pid)",
        "check_command": "/usr/sbin/haproxy -c -q -f"}


def test_router_defaults():
    env = load(env_with(web(), top="router: {}\n"))
    assert env.router == model.RouterConfig()
    assert rt.site_for(env, "h1").settings.bind == ":80"


def test_expose_without_a_router_is_refused_at_the_expose():
    text = env_with(web())
    line = text.splitlines().index(next(x for x in text.splitlines() if "expose:" in x)) + 1
    assert problems(text) == [f"environments/test/environment.yaml:{line}:13: services.web.expose: the environment "
                              "declares no 'router' (the HAProxy its hosts serve HTTP with)"]


@pytest.mark.parametrize("extra, expose, expected", [
    ('    ports: ["8080:8080"]\n', None, "services.web.ports: an exposed service publishes no host port"),
    ("    rollout: {strategy: stop-first}\n", None, "services.web.rollout.strategy: an exposed service is switched blue-green"),
    ("", "{hosts: [shop.example.com]}", "services.web.expose: missing 'port'"),
    ("", "{port: 0}", "services.web.expose.port: must be between 1 and 65535"),
    ("", "{port: 80, paths: /x}", "services.web.expose: unknown key 'paths' (did you mean 'path'?)"),
    ("", "{port: 80, hosts: [Shop_Example]}", "router on h1, h2: service web: host name 'Shop_Example' is not a lowercase DNS name"),
    ("", "{port: 80, path: api}", "router on h1, h2: service web: path 'api' must start with /"),
])
def test_an_exposed_service_is_refused_with_the_reason(extra, expose, expected):
    found = problems(env_with(web(extra, **({"expose": expose} if expose else {})), top=ROUTER))
    assert len(found) == 1 and expected in found[0], found


def test_blue_green_needs_expose():
    services = f"""\
  worker:
    image: registry.example:5000/demo/web:v1@{DIGEST}
    hosts: [web]
    rollout: {{strategy: blue-green}}
"""
    found = problems(env_with(services, top=ROUTER))
    assert [p.split(": ", 1)[1] for p in found] == [
        "services.worker.rollout.strategy: blue-green needs 'expose' (how the router reaches the service)"]


def test_two_services_claiming_one_host_and_path_on_a_host_are_refused_there():
    services = web() + f"""\
  api:
    image: registry.example:5000/demo/api:v1@{DIGEST}
    hosts: [h2]
    expose: {{hosts: [shop.example.com], path: /api/, port: 9000}}
"""
    found = problems(env_with(services, top=ROUTER))
    assert len(found) == 1 and found[0].endswith(
        "router on h2: services web and api: both claim host ['shop.example.com'] path /api"), found
    assert ":services" not in found[0] and "environment.yaml:" in found[0]


@pytest.mark.parametrize("router, expected", [
    ("router: {bind: 80}\n", "router.bind: expected a string"),
    ("router: {bind: 'localhost'}\n", "router.bind: expected ADDRESS:PORT or :PORT, got 'localhost'"),
    ("router: {reloads: x}\n", "router: unknown key 'reloads' (did you mean 'reload'?)"),
])
def test_bad_router_settings(router, expected):
    found = problems(env_with(web(), top=router))
    assert len(found) == 1 and expected in found[0], found


def test_an_exposed_service_is_checked_on_the_port_the_router_sends_requests_to():
    text = env_with(web().replace("{type: http, path: /health,", "{type: http, port: 9090, path: /health,"), top=ROUTER)
    found = problems(text)
    assert len(found) == 1 and "services.web.health.port: 9090 is not the exposed port 8080" in found[0], found
