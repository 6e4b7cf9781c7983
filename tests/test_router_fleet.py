"""Blue-green through each sandbox host's real HAProxy, under load, on all three hosts.

Two (or three) containers of the demo image run side by side on every host,
each on its own address; the host's router sends requests for
``web.rtfleet.test`` to one backend.  A bounded load generator in the root
namespace (a fixed number of requests at a fixed rate, a fresh connection
each, only to the hosts' addresses) runs while the switch steps of
``reconciler.core.router`` are applied through ``reconciler.adapters.router``
over each host's pinned SSH connection.  Every request must be answered
200, by the version expected at its moment.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from reconciler.adapters.hosts import DockerHost
from reconciler.adapters.router import Router
from reconciler.adapters.ssh import connect
from reconciler.core import router as cr
from reconciler.core import router_steps
from reconciler.core import router_config
from reconciler.core.model import ImageRef
from reconciler.sandbox import haproxy, layout
from tests.loadgen import Load, one_request

PREFIX = "rtfleet-web-"  # every container this module creates, removed at the end
BACKEND = "rtfleet-web"
HOSTNAME = "web.rtfleet.test"
CHECK = cr.RouterCheck(path="/health", interval=0.5, timeout=2.0, rise=3, fall=2)
UP_DEADLINE = 90.0  # generous: two busy cores
DRAIN_DEADLINE = 30.0
RATE = 20.0  # requests per second per host
MAX_REQUESTS = 1200  # per host and run: the load is bounded in count...
MAX_SECONDS = 60.0  # ...and in time


def test_haproxy_accepts_the_config_we_render(tmp_path):
    """Not a fleet test: the package's own ``haproxy -c`` on a config with every feature."""
    site = cr.Site(cr.RouterSettings(bind="127.0.0.1:18080", admin="127.0.0.1:18081",
                                     socket=str(tmp_path / "admin.sock"), state_file=str(tmp_path / "state"),
                                     log="stdout"),
                   (cr.Exposure("web", 8080, hostnames=("web.example.com",), path="/app", check=CHECK),
                    cr.Exposure("api", 9000, path="/api", check=cr.RouterCheck(kind="tcp")),
                    cr.Exposure("site", 80, check=cr.RouterCheck(path="/", body_contains="welcome home"))))
    text = router_config.render_config(site, {"web": (cr.Server("web-a", "10.0.0.2", 8080, 100),
                                          cr.Server("web-b", "10.0.0.3", 8080, 0, "drain")),
                                  "api": (cr.Server("api-a", "10.0.0.4", 9000, 0, "maint"),)})
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    check = subprocess.run([haproxy.binary(), "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_sandbox_describes_each_hosts_router_and_reads_it_back():
    """Not a fleet test: sandbox.json carries the router, and an older one without it still loads."""
    import json

    from reconciler.sandbox import description

    router = haproxy.description(layout.Layout(layout.state_dir()).host(2))
    assert router.settings().bind == "10.213.0.12:80" and router.admin.startswith("127.0.0.1:")
    for r in (router, None):
        host = description.SandboxHost("h2", "10.213.0.12", 22, "root", "/i", "/k", "/s", "rcl-h2", r)
        sandbox = description.Sandbox("/state", (host,), "reg", "reg/demo", {}, None, "/i", "/k", 1.0)
        assert description.from_json(json.loads(json.dumps(sandbox.to_json()))).host("h2") == host
    access = description.SandboxHost("h2", "10.213.0.12", 22, "root", "/i", "/k", "/s", "rcl-h2", router).router_access()
    assert (access.host, access.config_file) == ("h2", router.config_file) and router.pidfile in access.reload_command


# A real answer of HAProxy 2.6.12 to the observing line: blue serving,
# green draining after it answered three requests with a 500.
OBSERVED_ANSWER = """
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 web 1 blue 127.0.0.1 2 0 100 100 2 15 3 3 6 0 0 0 - 18911 - 0 0 - - 0
3 web 2 green 127.0.0.1 2 8 100 100 0 15 3 3 6 0 0 0 - 18912 - 0 0 - - 0

# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,
web,blue,0,0,0,1,,3,246,357,,0,,0,0,0,0,UP,100,1,0,1,1,2,1,,1,3,1,,3,,2,3,,3,L7OK,200,3,0,3,0,0,0,0,,,,3,0,0,,,,,0,,,0,0,1,1,,,,Layer7 check passed,,2,2,3,,,,127.0.0.1:18911,,http,,,,,,,,0,3,0,,,0,,0,0,1,1,0,0,0,0,1,100,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
web,green,0,0,0,1,,3,246,417,,0,,0,0,0,0,DRAIN,100,1,0,0,0,0,0,,1,3,2,,3,,2,3,,3,L7OK,200,0,0,0,0,0,3,0,,,,3,0,0,,,,,0,,,0,0,1,1,,,,Layer7 check passed,,2,2,3,,,,127.0.0.1:18912,,http,,,,,,,,0,3,0,,,0,,0,0,1,1,0,0,0,0,1,100,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,

# name
web

"""


def test_the_observing_answer_is_read_into_server_states():
    """Not a fleet test: the adapter's reading of ``show servers state; show stat; show backend``."""
    from reconciler.adapters.router import _parse

    servers, state_text, backends = _parse(OBSERVED_ANSWER)
    assert servers == {
        ("web", "blue"): cr.ServerState("web", "blue", "127.0.0.1", 18911, 100, 0, True,
                                        "UP L7OK Layer7 check passed", sessions=0, total=3, errors=0),
        ("web", "green"): cr.ServerState("web", "green", "127.0.0.1", 18912, 100, 8, True,
                                         "DRAIN L7OK Layer7 check passed", sessions=0, total=3, errors=3),
    }
    assert servers[("web", "green")].drain and servers[("web", "green")].as_server().state == "drain"
    assert backends == {"web"}
    # What goes into the server-state file is HAProxy's own text, format version first.
    assert state_text.startswith("1\n# be_id be_name") and state_text.count("\n") == 4


def _load(addresses: dict[str, str]) -> Load:
    return Load(addresses, HOSTNAME, rate=RATE, max_requests=MAX_REQUESTS, max_seconds=MAX_SECONDS)


@dataclass
class HostStage:
    name: str
    docker: DockerHost
    router: Router
    layout: layout.HostLayout
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # step label -> (before, after)


class Stage:
    """The module's world: per host a Docker client, a router client, the demo containers."""

    def __init__(self, fleet) -> None:
        self.fleet = fleet
        self.site = {}
        self.hosts: dict[str, HostStage] = {}
        lay = layout.layout()
        for h in fleet.hosts:
            conn = connect(h.ssh_access())
            site = cr.Site(h.router.settings(), (cr.Exposure(BACKEND, 8080, hostnames=(HOSTNAME,), check=CHECK),))
            self.hosts[h.name] = HostStage(h.name, DockerHost(h.name, conn), Router(conn, h.router_access(), site),
                                           lay.host(int(h.name[1:])))

    def each(self, fn):
        """``fn(host_stage)`` on every host at once; their results by host name."""
        with ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
            futures = {name: pool.submit(fn, hs) for name, hs in self.hosts.items()}
            return {name: f.result() for name, f in futures.items()}

    def start(self, hs: HostStage, tag: str) -> cr.Server:
        """The demo image ``tag`` running as ``PREFIX+tag`` (started again if stopped); its server."""
        api = hs.docker.engine.api
        name = PREFIX + tag
        found = api.containers(all=True, filters={"name": f"^/{name}$"})
        if not found:
            image = ImageRef.parse(self.fleet.images[tag])
            if not hs.docker.has_image(image):
                hs.docker.pull(image)
            api.create_container(image.pull_ref, name=name, host_config=api.create_host_config(), stop_timeout=2)
        api.start(name)
        address = api.inspect_container(name)["NetworkSettings"]["IPAddress"]
        assert address, f"{hs.name}: {name} has no address"
        return hs.router.site.exposure(BACKEND).server(tag, address)

    def stop(self, hs: HostStage, tag: str) -> None:
        hs.docker.engine.api.stop(PREFIX + tag, timeout=2)

    def run(self, hs: HostStage, steps) -> dict:
        """Apply ``steps`` in order; returns each wait's outcome and records the switch's time window."""
        outcomes = {}
        for step in steps:
            before = time.time()  # the load generator's clock
            switch = isinstance(step, router_steps.SetWeights)
            outcomes[step.step] = hs.router.apply(step, persist=not switch)
            if switch:  # the window is the command's alone; the files are written after
                hs.windows["switch"] = (before, time.time())
                hs.router.persist()
        return outcomes

    def serving(self, hs: HostStage, tag: str) -> None:
        """Make ``tag`` the only server of the backend on ``hs``, whatever is there (no load runs)."""
        green = self.start(hs, tag)
        current = [s for (b, s) in hs.router.servers() if b == BACKEND]
        if current == [green.name] and hs.router.servers()[(BACKEND, green.name)].weight == cr.FULL_WEIGHT:
            return
        steps = list(router_steps.switch_steps(hs.name, BACKEND, green=green, blue=None, check=CHECK,
                                     up_deadline=UP_DEADLINE, drain_deadline=DRAIN_DEADLINE))
        for other in current:
            if other != green.name:
                steps += [router_steps.SetWeights(hs.name, BACKEND, ((other, 0),)), *router_steps.abandon_steps(hs.name, BACKEND, other)]
        self.run(hs, router_steps.resume(steps, hs.router.servers()))
        assert [s for (b, s) in hs.router.servers() if b == BACKEND] == [green.name]

    def close(self) -> None:
        def clean(hs: HostStage) -> None:
            api = hs.docker.engine.api
            for c in api.containers(all=True, filters={"name": PREFIX}):
                api.remove_container(c["Id"], force=True)
            # The backend goes with the site that has no exposure: the router is back as it was.
            Router(hs.router.conn, hs.router.access, cr.Site(hs.router.site.settings)).configure()
            hs.docker.close()

        self.each(clean)


@pytest.fixture(scope="module")
def stage(fleet):
    st = Stage(fleet)
    try:
        for hs in st.hosts.values():
            if hs.router.needs_configure():
                hs.router.configure()
        yield st
    finally:
        st.close()


def _expect_switch(load: Load, stage: Stage, old: str, new: str) -> None:
    """Every answer 200; before a host's switch from ``old``, after it from ``new``, either while it runs."""
    assert load.failures() == [], f"{len(load.failures())} failed requests, first: {load.failures()[:3]}"
    for name, hs in stage.hosts.items():
        before, after = hs.windows["switch"]
        mine = [a for a in load.answers if a.host == name]
        early = [a.body for a in mine if a.ended < before]
        late = [a.body for a in mine if a.started > after]
        during = {a.body for a in mine if not (a.ended < before or a.started > after)}
        assert set(early) == {f"demo-web {old}"} and len(early) >= 10, (name, early[-5:])
        assert set(late) == {f"demo-web {new}"} and len(late) >= 10, (name, late[:5])
        assert during <= {f"demo-web {old}", f"demo-web {new}"}, (name, during)
        print(f"{name}: {len(mine)} requests, {len(early)} before the switch, {len(late)} after, "
              f"switch command {after - before:.3f}s")


@pytest.mark.fleet
@pytest.mark.slow
def test_switch_blue_to_green_under_load_loses_no_request(stage):
    stage.each(lambda hs: stage.serving(hs, "v1"))
    greens = stage.each(lambda hs: stage.start(hs, "v2"))
    addresses = {name: stage.fleet.host(name).address for name in stage.hosts}

    def switch(hs: HostStage) -> dict:
        return stage.run(hs, router_steps.switch_steps(hs.name, BACKEND, green=greens[hs.name], blue=cr.server_name(BACKEND, "v1"),
                                             check=CHECK, up_deadline=UP_DEADLINE, drain_deadline=DRAIN_DEADLINE))

    with _load(addresses) as load:
        outcomes = stage.each(switch)
    for name, outcome in outcomes.items():
        assert outcome["WaitUp"].state == "healthy", (name, outcome["WaitUp"])
        assert outcome["WaitDrained"] == 0, name
    _expect_switch(load, stage, "v1", "v2")
    stage.each(lambda hs: stage.stop(hs, "v1"))  # blue is stopped and retained for a rollback

    for name, hs in stage.hosts.items():
        assert [s.as_server() for s in hs.router.servers().values() if s.backend == BACKEND] == \
            [cr.Server(f"{BACKEND}-v2", greens[name].address, 8080, 100)]
        # The file holds what runs: a restart of HAProxy restores it.
        text = hs.layout.haproxy_config.read_text()
        assert f"server {BACKEND}-v2 {greens[name].address}:8080 " in text and f"{BACKEND}-v1" not in text
    # Only the declared host name reaches the service.
    assert one_request(addresses["h1"], "other.rtfleet.test")[0] == 404


@pytest.mark.fleet
@pytest.mark.slow
def test_green_that_never_turns_healthy_never_gets_a_request(stage):
    stage.each(lambda hs: stage.serving(hs, "v1"))
    bad = stage.each(lambda hs: stage.start(hs, "v3-unhealthy"))
    addresses = {name: stage.fleet.host(name).address for name in stage.hosts}

    def attempt(hs: HostStage):
        steps = router_steps.switch_steps(hs.name, BACKEND, green=bad[hs.name], blue=cr.server_name(BACKEND, "v1"), check=CHECK,
                                up_deadline=10.0, drain_deadline=DRAIN_DEADLINE)
        hs.router.apply(steps[0])
        verdict = hs.router.apply(steps[1])
        seen = hs.router.servers()[(BACKEND, bad[hs.name].name)]
        stage.run(hs, router_steps.abandon_steps(hs.name, BACKEND, bad[hs.name].name))
        return verdict, seen

    with _load(addresses) as load:
        results = stage.each(attempt)
    for name, (verdict, seen) in results.items():
        assert verdict.state == "unhealthy" and "never saw" in verdict.reason, (name, verdict)
        assert "L7STS" in seen.check and not seen.up, (name, seen)
        assert seen.total == 0, f"{name}: the unhealthy server received {seen.total} requests"
    assert load.failures() == []
    assert {a.body for a in load.answers} == {"demo-web v1"} and len(load.answers) >= 3 * 50
    for name, hs in stage.hosts.items():
        assert [s for (b, s) in hs.router.servers() if b == BACKEND] == [f"{BACKEND}-v1"], name


@pytest.mark.fleet
@pytest.mark.slow
def test_rollback_switches_back_to_the_retained_blue_and_resumes_after_a_lost_connection(stage):
    stage.each(lambda hs: stage.serving(hs, "v2"))
    stage.each(lambda hs: stage.stop(hs, "v1"))
    retained = stage.each(lambda hs: stage.start(hs, "v1"))  # a rollback starts the retained blue again
    addresses = {name: stage.fleet.host(name).address for name in stage.hosts}

    def roll_back(hs: HostStage) -> None:
        steps = router_steps.rollback_steps(hs.name, BACKEND, retained=retained[hs.name], current=cr.server_name(BACKEND, "v2"),
                                  check=CHECK, up_deadline=UP_DEADLINE, drain_deadline=DRAIN_DEADLINE)
        stage.run(hs, steps[:3])  # added, UP, switched: then the agent dies
        hs.router.conn.close()
        conn = connect(stage.fleet.host(hs.name).ssh_access())
        hs.router = Router(conn, hs.router.access, hs.router.site)
        hs.docker.close()
        hs.docker = DockerHost(hs.name, conn)
        left = router_steps.resume(steps, hs.router.servers())  # what the router shows decides what is left
        assert [s.step for s in left] == ["Drain", "WaitDrained", "Maint", "DelServer"], hs.name
        stage.run(hs, left)

    with _load(addresses) as load:
        stage.each(roll_back)
    _expect_switch(load, stage, "v2", "v1")
    for name, hs in stage.hosts.items():
        assert [s for (b, s) in hs.router.servers() if b == BACKEND] == [f"{BACKEND}-v1"], name


@pytest.mark.fleet
@pytest.mark.slow
def test_a_restart_of_haproxy_restores_the_live_routing(stage):
    stage.each(lambda hs: stage.serving(hs, "v1"))
    hs = stage.hosts["h1"]
    before = {k: v.as_server() for k, v in hs.router.servers().items() if k[0] == BACKEND}
    haproxy.restart(hs.layout)
    after = {k: v.as_server() for k, v in hs.router.servers().items() if k[0] == BACKEND}
    assert after == before
    # The server-state file restores its check state too: no wait for ``rise`` checks.
    assert hs.router.servers()[(BACKEND, f"{BACKEND}-v1")].up
    assert one_request(stage.fleet.host("h1").address, HOSTNAME) == (200, "demo-web v1")
