"""A router run from a pinned image (``router: {image: ...}``): its schema, its container, its plan steps.  Pure."""

from __future__ import annotations

import pytest

from reconciler.core import model
from reconciler.core import router_image as ri
from reconciler.core.managed import LABEL_ROUTER, ObservedContainer, ObservedHost
from reconciler.core.plan import plan_deploy
from reconciler.core.plan_steps import Pull
from reconciler.core.schema import load_environment, validate
from reconciler.errors import RouterOwned
from schema_helpers import DIGEST, env_with, snapshot

IMAGE = f"registry.example:5000/haproxy:2.6@{DIGEST}"
NEXT = "registry.example:5000/haproxy:2.7@sha256:" + "cd" * 32
ROUTER = f"""\
router:
  image: {IMAGE}
  bind: "{{address}}:8091"
  admin: 127.0.0.1:9911
  config_file: /srv/router/haproxy.cfg
  state_file: /srv/router/server-state
  log: stdout
"""
WEB = f"""\
  web:
    image: registry.example:5000/demo/web:v1@{DIGEST}
    hosts: [web]
    expose: {{hosts: [shop.example.com], port: 8080}}
    health: {{type: http, path: /health}}
"""


def problems(top: str) -> list[str]:
    return validate(snapshot(env=env_with(WEB, top=top)), "test")


def load(top: str = ROUTER) -> model.Environment:
    return load_environment(snapshot(env=env_with(WEB, top=top)), "test")


def test_the_image_loads_pinned_and_the_socket_defaults_into_the_mounted_directory():
    env = load()
    assert env.router.image == model.ImageRef.parse(IMAGE)
    assert env.router.socket == "/srv/router/admin.sock"
    spec = ri.spec_for(env, "h1")
    assert spec.name == "reconciler-router-test" and spec.directory == "/srv/router"
    assert spec.bind == "10.0.0.1:8091" and spec.restart == "unless-stopped"
    assert spec.command() == ("-W", "-db", "-f", "/srv/router/haproxy.cfg")
    assert spec.command(take_over=True)[-2:] == ("-x", "/srv/router/admin.sock")
    assert dict(spec.labels) == {LABEL_ROUTER: "test", ri.LABEL_ROUTER_IMAGE: IMAGE, ri.LABEL_ROUTER_BIND: "10.0.0.1:8091"}


def test_an_unpinned_router_image_is_refused_at_its_line():
    found = problems(ROUTER.replace(IMAGE, "registry.example:5000/haproxy:2.6"))
    assert len(found) == 1 and "router.image" in found[0] and "not pinned to a digest" in found[0]
    assert found[0].startswith("environments/test/environment.yaml:7:10:"), found


@pytest.mark.parametrize("line, says", [
    ('  reload: "systemctl reload haproxy"\n', "router.reload: a router run from 'image' is reloaded"),
    ("  check: haproxy -c -f\n", "router.check: a router run from 'image' is checked"),
    ("  socket: /run/admin.sock\n", "router.socket: with 'image', it must be in /srv/router/"),
])
def test_what_the_engine_does_for_an_image_router_cannot_be_given_otherwise(line, says):
    found = problems(ROUTER + line)
    assert len(found) == 1 and says in found[0], found


def router_container(name: str, image: str, env: str = "test", bind: str = "10.0.0.1:8091", state: str = "running"):
    labels = {LABEL_ROUTER: env, ri.LABEL_ROUTER_IMAGE: image, ri.LABEL_ROUTER_BIND: bind}
    return ObservedContainer(id=name + "-id", name=name, state=state, labels=tuple(sorted(labels.items())))


def steps(containers_h1=(), containers_h2=(), env=None):
    env = env or load()
    observed = {"h1": ObservedHost("h1", tuple(containers_h1), None),
                "h2": ObservedHost("h2", tuple(containers_h2), None)}
    return ri.steps(env, observed)


def test_a_host_without_its_router_container_gets_the_image_pulled_and_the_router_started():
    actions = steps()
    assert [(a.step, a.host) for a in actions] == [("Pull", "h1"), ("StartRouter", "h1"), ("Pull", "h2"), ("StartRouter", "h2")]
    assert actions[1].image == model.ImageRef.parse(IMAGE) and actions[1].replacing == ""


def test_a_router_in_place_is_left_alone_and_a_new_image_replaces_it():
    current = router_container("reconciler-router-test", IMAGE)
    assert steps([current], [router_container("reconciler-router-test", IMAGE, bind="10.0.0.2:8091")]) == []
    changed = load(ROUTER.replace(IMAGE, NEXT))
    actions = steps([current], [router_container("reconciler-router-test", IMAGE, bind="10.0.0.2:8091")], env=changed)
    assert [(a.step, a.host, getattr(a, "replacing", "")) for a in actions] == [
        ("Pull", "h1", ""), ("StartRouter", "h1", IMAGE), ("Pull", "h2", ""), ("StartRouter", "h2", IMAGE)]
    assert "keeping the live routing" in actions[1].reason


def test_an_interrupted_replacement_is_finished_and_a_stopped_router_started_again():
    done = router_container("reconciler-router-test", IMAGE)
    aside = router_container("reconciler-router-test-replaced", NEXT)
    stopped = router_container("reconciler-router-test", IMAGE, bind="10.0.0.2:8091", state="exited")
    actions = steps([done, aside], [stopped])
    assert [(a.step, a.host) for a in actions] == [("StartRouter", "h1"), ("Pull", "h2"), ("StartRouter", "h2")]
    assert actions[0].reason.startswith("finish the replacement")


def test_another_environments_router_on_the_same_host_and_port_is_refused_naming_both():
    theirs = router_container("reconciler-router-shop", IMAGE, env="shop")
    with pytest.raises(RouterOwned) as refused:
        steps([theirs])
    said = str(refused.value)
    assert "h1: port 8091" in said and "environment 'shop'" in said and "environment 'test'" in said
    # On another port, or stopped, it is no one's business here.
    assert [a.step for a in steps([router_container("reconciler-router-shop", IMAGE, env="shop", bind="10.0.0.1:80")])
            ][:2] == ["Pull", "StartRouter"]


def test_the_router_container_is_no_services_and_not_unmanaged():
    host = ObservedHost("h1", (router_container("reconciler-router-test", IMAGE),))
    assert host.managed("test") == () and host.unmanaged() == ()


def test_the_plan_starts_the_router_before_any_routing_and_pulls_its_image_first():
    env = load()
    plan = plan_deploy(env, {"h1": ObservedHost("h1", (), None), "h2": ObservedHost("h2", (), None)}, "rev")
    names = [a.step for a in plan.actions]
    assert names.index("StartRouter") < names.index("AddServer")
    assert all(isinstance(a, Pull) for a in plan.actions[:names.index("StartRouter")])
    assert model.ImageRef.parse(IMAGE) in {a.image for a in plan.actions if isinstance(a, Pull)}
    # Once in place and serving, nothing more is planned for it.
    there = {"h1": ObservedHost("h1", (router_container("reconciler-router-test", IMAGE),), None),
             "h2": ObservedHost("h2", (router_container("reconciler-router-test", IMAGE, bind="10.0.0.2:8091"),), None)}
    assert "StartRouter" not in [a.step for a in plan_deploy(env, there, "rev").actions]


def test_a_router_no_longer_needed_is_removed_after_the_deploy():
    without = load_environment(snapshot(env=env_with(WEB.replace("    expose: {hosts: [shop.example.com], port: 8080}\n", "")
                                                     .replace("health: {type: http, path: /health}",
                                                              "health: {type: http, path: /health, port: 8080}"),
                                                     top=ROUTER)), "test")
    actions = steps([router_container("reconciler-router-test", IMAGE)], env=without)
    assert [(a.step, a.host, a.container) for a in actions] == [("RemoveRouter", "h1", "reconciler-router-test")]


# ---------------------------------------------------------------- a package router's owner, in its config


def test_the_config_names_its_owner_and_another_environment_is_refused_while_the_owner_serves():
    from reconciler.core import router as rt
    from reconciler.core import router_config
    from reconciler.core import router_owner

    text = router_owner.stamp(router_config.render_config(rt.Site(rt.RouterSettings(bind=":80")), {}), "shop")
    assert router_owner.owner_in(text) == "shop" and router_config.hash_in(text) is not None  # both in the first lines
    assert text.splitlines()[2] == "# owner: shop" and text.splitlines()[3] == "global"
    up = rt.ServerState("web", "web-abc", "172.31.11.2", 8080, 100, 0, True)
    said = router_owner.refusal("test", "shop", [up], "h1", "/etc/haproxy/haproxy.cfg")
    assert "environment 'shop'" in said and "environment 'test'" in said and "web/web-abc" in said
    assert router_owner.refusal("shop", "shop", [up], "h1", "/c") is None  # its own
    assert router_owner.refusal("test", None, [up], "h1", "/c") is None  # a file nobody claims
    # Taken over once the owner routes nothing live: its servers down, drained or at weight 0.
    down = rt.ServerState("web", "web-abc", "172.31.11.2", 8080, 100, 0, False)
    idle = rt.ServerState("web", "web-abc", "172.31.11.2", 8080, 0, 0, True)
    assert router_owner.refusal("test", "shop", [down, idle], "h1", "/c") is None


def test_observing_a_router_another_environment_owns_stops_the_plan():
    from reconciler.core import router as rt
    from reconciler.engine import routing

    env = load(ROUTER.replace(f"  image: {IMAGE}\n", ""))

    class Owned:
        def servers(self):
            return {("web", "web-abc"): rt.ServerState("web", "web-abc", "172.31.11.2", 8080, 100, 0, True)}

        def header(self):
            return "sha256:0", "shop"

    observed = {"h1": ObservedHost("h1", (), None), "h2": ObservedHost("h2", (), None)}
    with pytest.raises(RouterOwned, match="h1: the router's config /srv/router/haproxy.cfg belongs to environment 'shop'"):
        routing.observe(env, observed, {"h1": Owned()})


def test_status_shows_the_router_containers_with_their_drift():
    from reconciler.core import report

    env = load()
    observed = {"h1": ObservedHost("h1", (router_container("reconciler-router-test", IMAGE),), None),
                "h2": ObservedHost("h2", (router_container("reconciler-router-test", NEXT, bind="10.0.0.2:8091"),), None)}
    rows = [r for r in report.running_rows(env, observed) if r["service"] == "(router)"]
    assert [(r["host"], r["container"], r["image"], r["drift"]) for r in rows] == [
        ("h1", "reconciler-router-test", IMAGE, []),
        ("h2", "reconciler-router-test", NEXT, ["image or bind differs from desired"])]
    assert "(router)" in report.running_text(report.running_rows(env, observed))


def test_render_of_an_image_router_validates_back_to_the_same(tmp_path, capsys):
    from test_render import load as load_repo
    from test_render import rendered, repository

    text = env_with(WEB, top=ROUTER)
    original = load_repo(repository(tmp_path / "written", "prod", text), "prod")
    out = rendered(tmp_path / "written", "prod", capsys=capsys)
    assert f"image: {IMAGE}" in out and "reload:" not in out
    assert load_repo(repository(tmp_path / "pasted", "prod", out), "prod") == original


def test_a_router_whose_process_does_not_run_its_config_file_is_configured_again():
    """Reproduced on the fleet: a reload failed after the config file was
    written, the next plan trusted the file's skeleton, and every retry's
    ``add server`` was answered "No such backend" (noted rolled-back, never
    converging).  The skeleton counts only when the process serves the site."""
    from reconciler.core import bluegreen
    from reconciler.core import router as rt
    from reconciler.core import router_config
    from reconciler.engine import routing

    env = load(ROUTER.replace(f"  image: {IMAGE}\n", ""))
    site = rt.site_for(env, "h1")

    class Stale:
        def __init__(self, serves: bool) -> None:
            self.serves = serves

        def servers(self):
            return {}

        def header(self):
            return router_config.skeleton_hash(site), env.name

        def serves_site(self):
            return self.serves

    observed = {"h1": ObservedHost("h1", (), None)}
    stale = routing.observe(env, observed, {"h1": Stale(False)})
    assert stale["h1"].router.skeleton is None
    assert [a.host for a in bluegreen.configures(env, stale)] == ["h1"]  # the plan writes and reloads it again
    live = routing.observe(env, observed, {"h1": Stale(True)})
    assert live["h1"].router.skeleton == router_config.skeleton_hash(site)
    assert bluegreen.configures(env, live) == []
