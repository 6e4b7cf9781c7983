"""core.traffic: the mirror, hold and maintenance switches as map entries, steps and config.  Pure."""

from __future__ import annotations

import pytest

from reconciler.core import model
from reconciler.core import managed
from reconciler.core import router as rt
from reconciler.core import router_steps
from reconciler.core import router_config
from reconciler.core import traffic
from test_bluegreen_schema import ROUTER, load, problems, web as web_yaml
from schema_helpers import env_with


SETTINGS = rt.RouterSettings(bind=":80", files="/etc/haproxy/reconciler")
WEB = rt.Exposure("web", 8080, ("shop.test",))


def test_the_support_files_sit_beside_the_config():
    assert traffic.files_dir("/etc/haproxy/haproxy.cfg") == "/etc/haproxy/reconciler"
    files = traffic.support_files(rt.Site(SETTINGS, (WEB,)), {"hold": {"web": "30000"}}, "-- lua")
    assert files == {"/etc/haproxy/reconciler/reconciler.lua": "-- lua",
                     "/etc/haproxy/reconciler/mirror.map": "",
                     "/etc/haproxy/reconciler/hold.map": "web 30000\n",
                     "/etc/haproxy/reconciler/maintenance.map": "",
                     "/etc/haproxy/reconciler/maintenance-web.html": traffic.DEFAULT_PAGE}


def test_the_config_loads_the_lua_and_each_backend_checks_its_maps_in_order():
    text = router_config.render_config(rt.Site(SETTINGS, (WEB,)), {})
    assert "    lua-load /etc/haproxy/reconciler/reconciler.lua" in text
    assert "    setenv RECONCILER_HOLD_MAP /etc/haproxy/reconciler/hold.map" in text
    backend = text.split("backend web", 1)[1]
    order = [backend.index(x) for x in ("maintenance-web.html", "lua.reconciler_hold web", "reconciler_held_out",
                                         "lua.reconciler_mirror")]
    assert order == sorted(order)
    # Without a files directory (an old sandbox config) no traffic rule is written.
    assert "lua" not in router_config.render_config(rt.Site(rt.RouterSettings(bind=":80"), (WEB,)), {})


def test_a_new_maintenance_page_changes_the_skeleton_the_switches_do_not():
    plain = rt.Site(SETTINGS, (WEB,))
    paged = rt.Site(SETTINGS, (rt.Exposure("web", 8080, ("shop.test",), page="<h1>later</h1>"),))
    assert router_config.skeleton_hash(plain) != router_config.skeleton_hash(paged)
    assert traffic.support_files(paged, {}, "")["/etc/haproxy/reconciler/maintenance-web.html"] == "<h1>later</h1>\n"


def test_commands_add_set_or_delete_a_map_entry_from_what_the_router_has():
    start = traffic.StartMirror("h1", "web", "web-abc", "172.31.0.5", 8080, 25)
    assert [c.line for c in traffic.commands(start, "/f", {})] == ["add map /f/mirror.map web 25@172.31.0.5:8080"]
    assert [c.line for c in traffic.commands(start, "/f", {"mirror": {"web": "0@x:1"}})] == \
        ["set map /f/mirror.map web 25@172.31.0.5:8080"]
    assert [c.line for c in traffic.commands(traffic.ReleaseRequests("h1", "web"), "/f", {"hold": {"web": "1"}})] == \
        ["del map /f/hold.map web"]
    assert traffic.commands(traffic.ReleaseRequests("h1", "web"), "/f", {}) == ()  # nothing held: nothing to send
    assert [c.line for c in traffic.commands(traffic.HoldRequests("h1", "web", 2.5), "/f", {})] == ["add map /f/hold.map web 2500"]


def test_the_mirror_sits_between_green_up_and_the_switch_and_resumes_from_the_router():
    green = rt.Server("web-new", "172.31.0.5", 8080)
    full = router_steps.cutover_steps("h1", "web", green=green, others=("web-old",), check=rt.RouterCheck(),
                            up_deadline=30, drain_deadline=5, ready=False)
    steps = traffic.with_mirror(full, model.Mirror(30, 20.0))
    names = [s.step for s in steps]
    assert names[:6] == ["AddServer", "WaitUp", "StartMirror", "WaitMirror", "StopMirror", "SetWeights"]
    up = rt.ServerState("web", "web-new", "172.31.0.5", 8080, 0, 0, True)
    old = rt.ServerState("web", "web-old", "172.31.0.4", 8080, 100, 0, True)
    mirroring = rt.RouterView((up, old), maps=(("mirror", "web", "30@172.31.0.5:8080"),))
    # Killed while mirroring: the wait is done again, then the mirror stopped, then the switch.
    assert [s.step for s in traffic.resume(steps, mirroring)][:3] == ["WaitMirror", "StopMirror", "SetWeights"]
    stopped = rt.RouterView((up, old), maps=(("mirror", "web", "0@172.31.0.5:8080"),))
    assert traffic.resume(steps, stopped)[0].step == "SetWeights"
    # Another green's mirror entry is not this one's.
    other = rt.RouterView((up, old), maps=(("mirror", "web", "30@172.31.0.9:8080"),))
    assert traffic.resume(steps, other)[0].step == "StartMirror"
    assert traffic.with_mirror(full, None) == full


def _env(**expose) -> model.Environment:
    service = model.Service("web", model.ImageRef.parse("r/web:1@sha256:" + "a" * 64), ("h1",),
                            expose=model.Expose(8080, **expose))
    return model.Environment("e", (model.Host("h1", "10.0.0.1"),), (service,), router=model.RouterConfig())


def _observed(*maps) -> dict[str, managed.ObservedHost]:
    return {"h1": managed.ObservedHost("h1", (), router=rt.RouterView(maps=tuple(maps)))}


def test_maintenance_and_pause_are_level_based():
    assert [s.step for s in traffic.settle_steps(_env(maintenance=model.Maintenance()), _observed())] == ["MaintenanceOn"]
    assert traffic.settle_steps(_env(maintenance=model.Maintenance()), _observed(("maintenance", "web", "on"))) == []
    assert [s.step for s in traffic.settle_steps(_env(), _observed(("maintenance", "web", "on")))] == ["MaintenanceOff"]
    assert traffic.settle_steps(_env(pause=model.Pause(60.0)), _observed()) == [traffic.HoldRequests("h1", "web", 60.0)]
    # A hold left by a run that died (or a resume): released.
    assert traffic.settle_steps(_env(), _observed(("hold", "web", "30000"))) == [traffic.ReleaseRequests("h1", "web")]
    assert traffic.settle_steps(_env(), _observed()) == []


def test_a_database_pause_wraps_the_database_steps_only_when_there_are_some():
    from reconciler.core.plan_steps import Backup

    env = _env(database_pause=model.Pause(20.0))
    backup = Backup("", "", "backup", database="db")
    wrapped = traffic.around_database(env, _observed(), [backup])
    assert [a.step for a in wrapped] == ["HoldRequests", "Backup", "ReleaseRequests"]
    assert all(isinstance(a, traffic.DatabaseHold) for a in (wrapped[0], wrapped[2]))
    assert traffic.around_database(env, _observed(), []) == []


@pytest.mark.parametrize("text, problem", [
    ("mirror: {percent: 0}", "percent"), ("mirror: {for: 10s}", "missing 'percent'"),
    ("pause: {deadline: 20m}", "at most 600s"), ("maintenance: {pages: x}", "pages"),
])
def test_bad_traffic_fields_are_refused_with_their_position(text, problem):
    found = problems(env_with(web_yaml(expose="{port: 8080, " + text + "}"), top=ROUTER))
    assert any(problem in p and ":" in p.split(" ")[0] for p in found), found


def test_the_traffic_fields_load_into_the_model():
    env = load(env_with(web_yaml(expose="{port: 8080, mirror: {percent: 10, for: 30s}, pause: {deadline: 20s}, "
                                        "database_pause: {}, maintenance: {page: '<h1>x</h1>'}}"), top=ROUTER))
    expose = env.service("web").expose
    assert expose.mirror == model.Mirror(10, 30.0) and expose.pause == model.Pause(20.0)
    assert expose.database_pause == model.Pause(30.0) and expose.maintenance == model.Maintenance("<h1>x</h1>")
    assert rt.exposure_of(env.service("web")).page == "<h1>x</h1>"


def test_the_maintenance_lever_parses_without_touching_the_state_option():
    from reconciler.cli.main import build_parser

    argv = ["maintenance", "on", "web", "--page", "<p>x</p>", "--yes"]
    args = build_parser(argv).parse_args(argv)
    assert (args.switch, args.service, args.page) == ("on", "web", "<p>x</p>")
    assert getattr(args, "state", None) is None  # where the agent's state is: never "on"


def test_the_levers_commit_is_signed_with_the_signing_key(tmp_path):
    import subprocess

    import pygit2

    from reconciler.cli.commands._traffic_lever import _commit, edit_expose

    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    repo = pygit2.init_repository(str(tmp_path / "repo"), bare=True, initial_head="main")
    text = "services:\n  web:\n    # kept\n    expose: {port: 8080}\n"
    sig = pygit2.Signature("t", "t@x")
    blob = repo.create_blob(text.encode())
    tb = repo.TreeBuilder()
    tb.insert("environment.yaml", blob, pygit2.enums.FileMode.BLOB)
    repo.create_commit("refs/heads/main", sig, sig, "first", tb.write(), [])
    new_text = edit_expose(text, ("services", "web"), "pause", {"deadline": "30s"})
    assert "# kept" in new_text and "pause" in new_text
    commit = _commit(repo, "refs/heads/main", "environment.yaml", new_text, "Pause: web in e", str(key))
    signature, _ = repo[commit].gpg_signature
    assert signature.startswith(b"-----BEGIN SSH SIGNATURE-----")
    assert repo.references["refs/heads/main"].target == repo[commit].id
    assert edit_expose(new_text, ("services", "web"), "pause", None).count("pause") == 0
