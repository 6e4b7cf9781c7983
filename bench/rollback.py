"""Figure: rollback time on 3 hosts.

Ours: v1 runs (stop-first, published port); a commit to the never-healthy
v3 is deployed with ``deploy_target``; the executor's report callback gives
the time of the failing health verdict (the ``failed`` events of the
CheckHealth group) and of each host's ``restored`` event (the previous
container renamed back, started, and answering its own health check).
Figure: last ``restored`` minus first ``failed``.
Baseline: ``docker start`` of the stopped previous container on every host
in parallel over open SSH connections, until it answers ``/health`` (polled
every 200 ms, the product's interval).
"""

from __future__ import annotations

import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import PORT_ROLLBACK, PORT_ROLLBACK_BASE, Row, cleanup, close_engines, env_repo, median, ms, \
    open_engines, ratio_row
from bench.deploy import _healthy

ENV = "bench-rollback"
BASE_NAME = "bench-rollback-base-web"
LIMIT = 1.5
ABSOLUTE = 2.0
INTERVAL = 0.2


def service_yaml(image: str) -> str:
    return textwrap.dedent(f"""\
        web:
          image: {image}
          hosts: all
          ports: ["{PORT_ROLLBACK}:8080"]
          health: {{type: http, path: /health, interval: 200ms, successes: 1, deadline: 2s}}
          rollout: {{batch_size: 3, strategy: stop-first}}
          stop_timeout: 2s
        """)


def ours_once(repo) -> tuple[float, dict]:
    from reconciler.engine.deploy import deploy_target

    events: list[tuple[float, str, dict]] = []

    def report(event: str, **fields) -> None:
        events.append((time.perf_counter(), event, fields))

    result = deploy_target(repo.target(), report_progress=report)
    if result.outcome is None or result.outcome.result != "rolled-back":
        raise RuntimeError(f"expected a rollback, got {result.outcome and result.outcome.result}: "
                           f"{result.outcome and result.outcome.failure}")
    failed = [t for t, e, f in events if e == "failed" and f.get("step") == "CheckHealth"]
    restored = [t for t, e, f in events if e == "restored"]
    rollback = [t for t, e, f in events if e == "rollback"]
    if not failed or len(restored) < 3:
        raise RuntimeError(f"rollback events missing: {len(failed)} failed, {len(restored)} restored")
    first = min(failed)
    return max(restored) - first, {"to_rollback_event": min(rollback) - first}


def baseline_setup(sb, engines: dict, image: str) -> None:
    def one(host):
        api = engines[host.name].engine.api
        try:
            api.remove_container(BASE_NAME, force=True)
        except Exception:
            pass
        created = api.create_container(_pull_ref(image), name=BASE_NAME, ports=[8080],
                                       host_config=api.create_host_config(port_bindings={8080: PORT_ROLLBACK_BASE}),
                                       stop_timeout=2)
        api.start(created["Id"])

    with ThreadPoolExecutor(max_workers=len(sb.hosts)) as pool:
        list(pool.map(one, sb.hosts))


def _pull_ref(image: str) -> str:
    name, _, digest = image.rpartition("@")
    return f"{name.rsplit(':', 1)[0]}@{digest}"


def baseline_once(sb, engines: dict) -> float:
    """Stop (untimed), then time ``docker start`` + first 200 on every host."""
    with ThreadPoolExecutor(max_workers=len(sb.hosts)) as pool:
        list(pool.map(lambda h: engines[h.name].engine.api.stop(BASE_NAME, timeout=2), sb.hosts))

    def one(host):
        engines[host.name].engine.api.start(BASE_NAME)
        deadline = time.monotonic() + 20
        while not _healthy(host.address, PORT_ROLLBACK_BASE):
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline container on {host.name} never answered")
            time.sleep(INTERVAL)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(sb.hosts)) as pool:
        list(pool.map(one, sb.hosts))
    return time.perf_counter() - t0


def run(reps: int = 5) -> list[Row]:
    from bench.common import sandbox

    sb = sandbox()
    repo = env_repo(sb, ENV)
    ours, base, to_event = [], [], []
    try:
        repo.commit(service_yaml(sb.images["v1"]), message="web v1")
        from reconciler.engine.deploy import deploy_target

        first = deploy_target(repo.target(), report_progress=lambda *a, **k: None)
        if first.outcome is None or first.outcome.result != "deployed":
            raise RuntimeError(f"setup deploy failed: {first.outcome and first.outcome.failure}")
        repo.commit(service_yaml(sb.images["v3-unhealthy"]), message="web v3 (never healthy)")
        engines = open_engines(sb)
        try:
            baseline_setup(sb, engines, sb.images["v1"])
            for _ in range(reps):
                seconds, extra = ours_once(repo)
                ours.append(seconds)
                to_event.append(extra["to_rollback_event"])
                base.append(baseline_once(sb, engines))
        finally:
            close_engines(engines)
    finally:
        cleanup(sb, f"{ENV}-")
    o, b = median(ours), median(base)
    return [ratio_row("rollback 3 hosts (verdict -> old answers)", o, b, LIMIT, extra_ok=o < ABSOLUTE,
                      target=f"<= {LIMIT:g}x and < {ABSOLUTE:g} s",
                      note=f"median of {reps}; ours from the first CheckHealth `failed` event to the last `restored`"
                           f" (verdict -> rollback start {ms(median(to_event))}); baseline = docker start + first"
                           f" 200 on /health, 3 hosts in parallel",
                      samples=ours, baseline_samples=base)]
