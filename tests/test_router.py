"""The router's pure core: config text, the switch as data, resuming from what the router shows."""

from __future__ import annotations

import pytest

from reconciler.core import router as r
from reconciler.core import router_steps
from reconciler.core import router_config
from reconciler.core.model import HealthCheck

SETTINGS = r.RouterSettings(bind="10.0.0.5:80", admin="127.0.0.1:9901", socket="/run/haproxy/admin.sock",
                            state_file="/var/lib/haproxy/state", log="/dev/log")
CHECK = r.RouterCheck(path="/health", interval=0.5, timeout=2.0, rise=3, fall=2)


def site(*exposures: r.Exposure) -> r.Site:
    return r.Site(SETTINGS, exposures)


def test_empty_site_renders_the_global_part_and_a_404_for_everything():
    assert router_config.render_config(site(), {}) == f"""\
# Written by reconciler: this host's routing, rewritten after every router change.
# skeleton: {router_config.skeleton_hash(site())}
global
    stats socket ipv4@127.0.0.1:9901 level admin
    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners
    server-state-file /var/lib/haproxy/state
    log /dev/log daemon notice

defaults
    mode http
    log global
    option dontlognull
    timeout connect 5000ms
    timeout client 30000ms
    timeout server 30000ms
    retries 3
    option redispatch 1
    load-server-state-from-file global

frontend http
    bind 10.0.0.5:80
    default_backend reconciler-unrouted

backend reconciler-unrouted
    http-request return status 404 content-type text/plain string "no service for this host and path"
"""


def test_services_share_one_frontend_most_specific_rule_first_and_servers_keep_their_state():
    text = router_config.render_config(
        site(r.Exposure("site", 8080, check=CHECK),
             r.Exposure("api", 9000, path="/api/", check=r.RouterCheck(kind="tcp")),
             r.Exposure("admin", 8080, hostnames=("admin.example.com",), path="/ops", check=CHECK),
             r.Exposure("shop", 8080, hostnames=("shop.example.com", "www.shop.example.com"),
                        check=r.RouterCheck(path="/ready", body_contains="ok"))),
        {"site": (r.Server("site-b", "172.17.0.3", 8080, 0, "drain"), r.Server("site-a", "172.17.0.2", 8080, 100)),
         "api": (r.Server("api-1", "172.17.0.4", 9000, 0, "maint"),),
         "gone": (r.Server("x", "172.17.0.9", 1, 100),)})
    frontend = text.split("frontend http\n")[1].split("\n\n")[0]
    assert frontend.splitlines() == [
        "    bind 10.0.0.5:80",
        "    acl host_admin hdr(host),field(1,:) -i admin.example.com",
        "    acl path_admin path /ops",
        "    acl path_admin path_beg /ops/",
        "    use_backend admin if host_admin path_admin",
        "    acl host_shop hdr(host),field(1,:) -i shop.example.com www.shop.example.com",
        "    use_backend shop if host_shop",
        "    acl path_api path /api",
        "    acl path_api path_beg /api/",
        "    use_backend api if path_api",
        "    default_backend site",
    ]
    backends = text.split("\n\n")[4:]
    assert backends == [
        "backend admin\n    balance roundrobin\n    timeout check 2000ms\n    option httpchk GET /health\n"
        "    http-check expect status 200",
        "backend api\n    balance roundrobin\n    timeout check 2000ms\n"
        "    server api-1 172.17.0.4:9000 check inter 1000ms rise 2 fall 2 weight 0 disabled",
        "backend shop\n    balance roundrobin\n    timeout check 2000ms\n    option httpchk GET /ready\n"
        '    http-check expect status 200\n    http-check expect string "ok"',
        "backend site\n    balance roundrobin\n    timeout check 2000ms\n    option httpchk GET /health\n"
        "    http-check expect status 200\n"
        "    server site-a 172.17.0.2:8080 check inter 500ms rise 3 fall 2 weight 100\n"
        # Draining is weight 0 in the file: a restart must not send it new requests.
        "    server site-b 172.17.0.3:8080 check inter 500ms rise 3 fall 2 weight 0\n",
    ]


def test_the_skeleton_hash_ignores_servers_and_follows_rules():
    base = site(r.Exposure("web", 8080))
    with_servers = router_config.render_config(base, {"web": (r.Server("w1", "1.2.3.4", 8080, 100),)})
    assert router_config.hash_in(with_servers) == router_config.hash_in(router_config.render_config(base, {})) == router_config.skeleton_hash(base)
    assert router_config.skeleton_hash(site(r.Exposure("web", 8080, path="/x"))) != router_config.skeleton_hash(base)
    assert router_config.hash_in("global\n    daemon\n") is None


@pytest.mark.parametrize("exposures, expected", [
    ((r.Exposure("a", 80), r.Exposure("b", 80)), ["services a and b: both claim host any path /"]),
    ((r.Exposure("a", 80, hostnames=("x.io", "y.io"), path="/p/"), r.Exposure("b", 80, hostnames=("y.io",), path="/p")),
     ["services a and b: both claim host ['y.io'] path /p/"]),
    ((r.Exposure("a", 80, hostnames=("x.io",)), r.Exposure("b", 80, hostnames=("y.io",))), []),
    ((r.Exposure("a", 80, path="/a"), r.Exposure("b", 80, path="/b")), []),
    ((r.Exposure("a b", 0),), ["service 'a b': not usable as a router backend name", "service a b: port 0 out of range"]),
    ((r.Exposure("a", 80, hostnames=("Bad_Host",), path="api"),),
     ["service a: host name 'Bad_Host' is not a lowercase DNS name",
      "service a: path 'api' must start with / and hold no space or quote"]),
    ((r.Exposure("a", 80, check=r.RouterCheck(body_contains='say "hi"')),),
     ["service a: health body text cannot hold quotes, backslashes or #"]),
    ((r.Exposure("a", 80), r.Exposure("a", 81, path="/x")), ["service a: exposed twice on one host"]),
    ((r.Exposure("reconciler-unrouted", 80),), ["service 'reconciler-unrouted': not usable as a router backend name"]),
])
def test_problems_name_every_clash_and_bad_value(exposures, expected):
    assert list(r.problems(site(*exposures))) == expected


def test_render_refuses_a_site_with_problems():
    with pytest.raises(ValueError, match="both claim"):
        router_config.render_config(site(r.Exposure("a", 80), r.Exposure("b", 80)), {})


def test_router_check_from_a_service_health_check():
    assert r.router_check(HealthCheck(kind="http", port=8080, path="/health", interval=2.0, timeout=1.0,
                                      successes=3, body_contains="ok")) == \
        r.RouterCheck("http", "/health", 200, "ok", 2.0, 1.0, 3, 2)
    # The router cannot run a command: a TCP connect, and the engine runs the rest.
    assert r.router_check(HealthCheck(kind="command", command=("true",), successes=0)).kind == "tcp"
    assert r.router_check(HealthCheck(kind="command", successes=0)).rise == 1


GREEN = r.Server("web-green", "172.17.0.3", 8080)


def test_an_exposure_makes_a_release_s_server_on_its_container_port():
    assert r.Exposure("web", 8080).server("0123456789abcdef", "172.17.0.3") == \
        r.Server("web-0123456789ab", "172.17.0.3", 8080, 0, "ready")


def test_switch_steps_blue_green():
    assert router_steps.switch_steps("h1", "web", green=GREEN, blue="web-blue", check=CHECK,
                          up_deadline=60, drain_deadline=30) == (
        router_steps.AddServer("h1", "web", "web-green", "172.17.0.3", 8080, CHECK),
        router_steps.WaitUp("h1", "web", "web-green", 60),
        router_steps.SetWeights("h1", "web", (("web-green", 100), ("web-blue", 0))),
        router_steps.Drain("h1", "web", "web-blue"),
        router_steps.WaitDrained("h1", "web", "web-blue", 30),
        router_steps.Maint("h1", "web", "web-blue"),
        router_steps.DelServer("h1", "web", "web-blue"),
    )


def test_first_deploy_has_nothing_to_drain_and_rollback_is_the_switch_back():
    assert router_steps.switch_steps("h1", "web", green=GREEN, blue=None, check=CHECK, up_deadline=60, drain_deadline=30) == (
        router_steps.AddServer("h1", "web", "web-green", "172.17.0.3", 8080, CHECK),
        router_steps.WaitUp("h1", "web", "web-green", 60),
        router_steps.SetWeights("h1", "web", (("web-green", 100),)),
    )
    blue = r.Server("web-blue", "172.17.0.7", 8080)
    back = router_steps.rollback_steps("h1", "web", retained=blue, current="web-green", check=CHECK, up_deadline=60,
                            drain_deadline=30)
    assert [s.step for s in back] == ["AddServer", "WaitUp", "SetWeights", "Drain", "WaitDrained", "Maint", "DelServer"]
    assert back[0].address == "172.17.0.7" and back[2].weights == (("web-blue", 100), ("web-green", 0))
    assert {getattr(s, "server", None) for s in back[3:]} == {"web-green"}
    assert router_steps.abandon_steps("h1", "web", "web-green") == (router_steps.Maint("h1", "web", "web-green"),
                                                        router_steps.DelServer("h1", "web", "web-green"))


def test_commands_of_each_step():
    add = router_steps.AddServer("h1", "web", "g", "172.17.0.3", 8080, CHECK)
    rearm = router_steps.Command("set server web/g weight 0; set server web/g state ready; set server web/g health down")
    assert router_steps.commands(add) == (
        router_steps.Command("add server web/g 172.17.0.3:8080 check inter 500ms rise 3 fall 2 weight 0",
                  ok=("New server registered.",)),
        router_steps.Command("enable health web/g"),
        rearm,
    )
    assert router_steps.commands(add, exists=True)[-1] == rearm
    assert router_steps.commands(add, exists=True)[1].line == "set server web/g addr 172.17.0.3 port 8080"
    # Raised weights first: the backend never has all its servers at 0.
    assert router_steps.commands(router_steps.SetWeights("h1", "web", (("b", 0), ("g", 100)))) == (
        router_steps.Command("set server web/g weight 100; set server web/b weight 0"),)
    assert router_steps.commands(router_steps.Drain("h1", "web", "b")) == (router_steps.Command("set server web/b state drain"),)
    assert router_steps.commands(router_steps.Maint("h1", "web", "b")) == (router_steps.Command("set server web/b state maint"),)
    assert router_steps.commands(router_steps.DelServer("h1", "web", "b")) == (router_steps.Command("del server web/b", ok=("Server deleted.",)),)
    assert router_steps.commands(router_steps.WaitUp("h1", "web", "g")) == ()


def test_command_answers():
    assert router_steps.Command("set server web/g weight 1").succeeded("\n")
    assert not router_steps.Command("set server web/g weight 1").succeeded("No such server.\n")
    assert not router_steps.Command("set a; set b").succeeded("\nNo such server.\n\n")
    delete = router_steps.Command("del server web/b", ok=("Server deleted.",))
    assert delete.succeeded("Server deleted.\n") and not delete.succeeded("\n")
    assert not delete.succeeded("Only servers in maintenance mode can be deleted.\n")


def state(name, weight=0, admin=0, running=True, sessions=0, address="172.17.0.3", backend="web"):
    return r.ServerState(backend, name, address, 8080, weight, admin, running, "", sessions)


def observed(*states):
    return {(s.backend, s.name): s for s in states}


BLUE_STEPS = router_steps.switch_steps("h1", "web", green=r.Server("g", "172.17.0.3", 8080), blue="b", check=CHECK,
                            up_deadline=60, drain_deadline=30)
DRAIN = 0x08
MAINT = 0x01


@pytest.mark.parametrize("servers, first_left", [
    # nothing done: all of it
    ((state("b", 100, address="172.17.0.2"),), "AddServer"),
    # added but left in maintenance by a crash: added again (with exists=True)
    ((state("b", 100, address="172.17.0.2"), state("g", admin=MAINT, running=False)), "AddServer"),
    # added with another address (the container was recreated): added again
    ((state("b", 100, address="172.17.0.2"), state("g", address="172.17.0.9")), "AddServer"),
    # added, checks not passed yet
    ((state("b", 100, address="172.17.0.2"), state("g", running=False)), "WaitUp"),
    # UP: the switch is next
    ((state("b", 100, address="172.17.0.2"), state("g")), "SetWeights"),
    # switched; blue idle but not draining: not "drained" (that would skip the drain)
    ((state("b", 0, address="172.17.0.2"), state("g", 100)), "Drain"),
    ((state("b", 0, DRAIN, sessions=2, address="172.17.0.2"), state("g", 100)), "WaitDrained"),
    ((state("b", 0, DRAIN, address="172.17.0.2"), state("g", 100)), "Maint"),
    ((state("b", 0, MAINT | DRAIN, address="172.17.0.2"), state("g", 100)), "DelServer"),
    ((state("g", 100),), None),
])
def test_resume_continues_from_the_first_step_not_in_effect(servers, first_left):
    left = router_steps.resume(BLUE_STEPS, observed(*servers))
    assert (left[0].step if left else None) == first_left
    assert left == BLUE_STEPS[len(BLUE_STEPS) - len(left):]


def test_resume_never_skips_the_switch_when_blue_is_not_in_the_router():
    # Blue absent makes Drain..DelServer vacuously true; a prefix rule still runs everything.
    assert router_steps.resume(BLUE_STEPS, {}) == BLUE_STEPS


def test_observed_servers_become_config_servers():
    seen = observed(state("b", 100, DRAIN, address="172.17.0.2"), state("g", 0, MAINT), state("x", 5, backend="api"))
    assert r.servers_by_backend(seen) == {
        "api": (r.Server("x", "172.17.0.3", 8080, 5, "ready"),),
        "web": (r.Server("b", "172.17.0.2", 8080, 100, "drain"), r.Server("g", "172.17.0.3", 8080, 0, "maint")),
    }
    assert state("g", running=True, admin=MAINT).up is False
