"""Figures: blue-green through each host's router (HAProxy), 3 hosts, under load.

Setup: one exposed service (``expose``, the router's HTTP check every
100 ms, one pass makes it UP), v1 deployed through the engine.  Each
repetition, while a bounded load generator runs (20 requests a second per
host, a fresh connection each, the sandbox hosts' router port only):

- **deploy**: a commit v1 -> v2 deployed with ``engine.run`` (the agent's
  and ``reconciler apply``'s engine); failed requests counted.  Baseline:
  the same deploy of a service publishing a host port, stop-first (what a
  service without ``expose`` does), under the same load on that port.
- **rollback**: the lever (``Request(operation="rollback")``, what
  ``reconciler rollback`` runs) back to the retained v1; failed requests
  counted, and the time from the run's first step (``Revive`` begins) to
  the last host's ``SetWeights`` done (every new request on the retained
  release), target under 1 s.  Baseline: ``docker start`` of a stopped
  container on the 3 hosts in parallel until it answers ``/health``
  (polled every 100 ms), the floor of "start it and see it healthy".
- **switch**: per host, from ``WaitUp`` done (the router sees green UP) to
  ``SetWeights`` done (every new request to green), against the router's
  own command round trip (``show info`` over the same SSH connection,
  median of 20) as the floor.

Containers are ``bench-router-*``; host port 18330 (baseline); each host's
router gets the bench's backend for the figure and is given back its empty
site at the end.
"""

from __future__ import annotations

import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import Row, cleanup, close_engines, env_repo, log, median, ms, open_engines, ratio_row

ENV = "bench-router"
BASE_ENV = "bench-routerbase"  # containers bench-routerbase-*: the baseline's published-port service
HOSTNAME = "bench.router.test"
PORT_BASE = 18330
RATE = 20.0
ROLLBACK_LIMIT = 1.0  # seconds, 3 hosts


def exposed(image: str) -> str:
    from tests.bgfleet import exposed_web

    return exposed_web(image, HOSTNAME, interval="100ms", successes=1, drain="5s")


def published(image: str) -> str:
    return textwrap.dedent(f"""\
        web:
          image: {image}
          hosts: all
          ports: ["{PORT_BASE}:8080"]
          health: {{type: http, path: /health, interval: 100ms, successes: 1, deadline: 20s}}
          rollout: {{batch_size: 1, strategy: stop-first}}
          stop_timeout: 2s
        """)


class Events:
    """The run's report events with their time (``clock``'s: perf_counter unless told)."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.items: list[tuple[float, str, dict]] = []
        self.clock = clock

    def __call__(self, event: str, **fields) -> None:
        self.items.append((self.clock(), event, fields))

    def at(self, event: str, step: str, host: str | None = None) -> list[float]:
        return [t for t, e, f in self.items if e == event and f.get("step") == step and (host is None or f.get("host") == host)]


def _run(repo_path: Path, env: str, sb, operation: str, events: Events, expect: str = "deployed"):
    from reconciler.adapters import fleet
    from reconciler.engine.run import Context, Request, run

    def open_hosts(environment, known_hosts_file):
        return fleet.open_hosts(environment.hosts, identity_file=sb.identity_file, known_hosts_file=known_hosts_file)

    gitdir = repo_path / ".git"
    ctx = Context(repo=gitdir, state_dir=gitdir / "reconciler", open_hosts=open_hosts, close_hosts=fleet.close_hosts,
                  observers=(events,))
    result = run(ctx, Request(env, operation, trigger="cli", actor="bench", force=True))
    if result.result != expect:
        raise RuntimeError(f"{env} {operation}: {result.result} {result.reason}: {result.message}")
    return result


def _commit(repo, sb, services: str, message: str) -> None:
    from tests.bgfleet import write_environment

    write_environment(repo.path, repo.env, sb, services, message=message)


def _commit_plain(repo, services: str, message: str) -> None:
    repo.commit(services, message=message)


def _load(sb, port: int = 80):
    from tests.loadgen import Load

    return Load({h.name: h.address for h in sb.hosts}, HOSTNAME, rate=RATE, max_requests=2000, max_seconds=120.0,
                port=port)


def _failed(load) -> tuple[int, int]:
    return len(load.failures()), len(load.answers)


def _command_floor(sb) -> float:
    """The router's own round trip: ``show info`` over an open SSH connection, median of 20, per host in parallel."""
    from reconciler.adapters.router import Router
    from reconciler.adapters.ssh import connect
    from reconciler.core import router as rt

    def one(h) -> float:
        conn = connect(h.ssh_access())
        try:
            router = Router(conn, h.router_access(), rt.Site(h.router.settings()))
            router.send("show info", "warm up")
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                router.send("show info", "round trip")
                times.append(time.perf_counter() - t0)
            return median(times)
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=len(sb.hosts)) as pool:
        return median(pool.map(one, sb.hosts))


def _start_baseline(sb, engines: dict, name: str) -> float:
    """Stop (untimed), then time ``docker start`` + first 200 on /health on every host in parallel."""
    from bench.deploy import _healthy

    with ThreadPoolExecutor(max_workers=len(sb.hosts)) as pool:
        list(pool.map(lambda h: engines[h.name].engine.api.stop(name, timeout=2), sb.hosts))

    def one(host) -> None:
        engines[host.name].engine.api.start(name)
        deadline = time.monotonic() + 20
        while not _healthy(host.address, PORT_BASE):
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline container on {host.name} never answered")
            time.sleep(0.1)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(sb.hosts)) as pool:
        list(pool.map(one, sb.hosts))
    return time.perf_counter() - t0


def _reset_routers(sb) -> None:
    from reconciler.adapters.router import Router
    from reconciler.adapters.ssh import connect
    from reconciler.core import router as rt

    for h in sb.hosts:
        conn = connect(h.ssh_access())
        try:
            Router(conn, h.router_access(), rt.Site(h.router.settings())).configure()
        finally:
            conn.close()


def run(reps: int = 3) -> list[Row]:
    from bench.common import sandbox

    sb = sandbox()
    hosts = [h.name for h in sb.hosts]
    repo = env_repo(sb, ENV)
    base = env_repo(sb, BASE_ENV)
    deploy_failed, deploy_total, base_failed, base_total, back_failed, back_total = 0, 0, 0, 0, 0, 0
    switches, rollbacks, starts = [], [], []
    try:
        _commit(repo, sb, exposed(sb.images["v1"]), "web v1")
        _run(repo.path, ENV, sb, "deploy", Events())
        _commit_plain(base, published(sb.images["v1"]), "web v1, published port")
        _run(base.path, BASE_ENV, sb, "deploy", Events())
        floor = _command_floor(sb)
        for rep in range(reps):
            log(f"router: repetition {rep + 1}/{reps}")
            _commit(repo, sb, exposed(sb.images["v2"]), f"web v2 ({rep})")
            events = Events()
            with _load(sb) as load:
                _run(repo.path, ENV, sb, "deploy", events)
            failed, total = _failed(load)
            deploy_failed, deploy_total = deploy_failed + failed, deploy_total + total
            for host in hosts:
                up, switched = events.at("done", "WaitUp", host), events.at("done", "SetWeights", host)
                switches.append(switched[-1] - up[-1])

            events = Events()
            with _load(sb) as load:
                _run(repo.path, ENV, sb, "rollback", events, expect="rolled-back")
            failed, total = _failed(load)
            back_failed, back_total = back_failed + failed, back_total + total
            rollbacks.append(max(events.at("done", "SetWeights")) - min(events.at("begin", "Revive")))

            tag = "v2" if rep % 2 == 0 else "v1"
            _commit_plain(base, published(sb.images[tag]), f"web {tag}, published port ({rep})")
            with _load(sb, PORT_BASE) as load:
                _run(base.path, BASE_ENV, sb, "deploy", Events())
            failed, total = _failed(load)
            base_failed, base_total = base_failed + failed, base_total + total
        engines = open_engines(sb)
        try:
            starts = [_start_baseline(sb, engines, f"{BASE_ENV}-web") for _ in range(reps)]
        finally:
            close_engines(engines)
    finally:
        cleanup(sb, f"{ENV}-")
        cleanup(sb, f"{BASE_ENV}-")
        _reset_routers(sb)
    switch, rollback, start = median(switches), median(rollbacks), median(starts)
    rows = [
        Row("blue-green deploy under load: failed requests", f"{deploy_failed}/{deploy_total}",
            f"{base_failed}/{base_total}", None, "0", "yes" if deploy_failed == 0 else "no",
            f"{reps} deploys v1->v2, 3 hosts, {RATE:g} req/s per host through each host's router; baseline: "
            f"the same deploys of a published-port service, stop-first, on its port",
            dict(ours=deploy_failed, baseline=base_failed)),
        Row("blue-green rollback under load: failed requests", f"{back_failed}/{back_total}", "-", None, "0",
            "yes" if back_failed == 0 else "no", f"{reps} rollback levers to the retained v1",
            dict(ours=back_failed)),
        Row("switch: green UP -> all new requests on green", ms(switch), ms(floor), switch / floor,
            "report the ratio", "n/a",
            f"median over {reps} x {len(hosts)} host switches, from WaitUp's done to SetWeights' done: the "
            f"command plus the journal's records before and after it (each fsynced); baseline: one Runtime API "
            f"round trip (show info) over the host's SSH connection",
            dict(ours=switch, baseline=floor, samples=switches)),
        ratio_row("rollback 3 hosts with the router (lever -> all new requests on the retained)", rollback, start,
                  float("inf"), extra_ok=rollback < ROLLBACK_LIMIT, target=f"< {ROLLBACK_LIMIT:g} s",
                  note=f"median of {reps}; from Revive's begin to the last SetWeights done (retained container "
                       f"started, router check UP, switched); baseline: docker start + first 200 on /health, 3 hosts",
                  samples=rollbacks, baseline_samples=starts),
    ]
    log(f"router: switch {ms(switch)} (floor {ms(floor)}), rollback {ms(rollback)}, start {ms(start)}")
    return rows
