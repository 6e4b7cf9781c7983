"""Figure: no-op reconcile (drift check) of 3 hosts x 20 services, and of 50 endpoints.

Ours: ``fleet.open_hosts`` + ``fleet.observe_all`` + ``plan.plan_deploy`` on
an environment that is in sync (what every drift check of the agent does).
Baseline: one container list (``docker ps -a``: the Engine API's
``GET /containers/json?all=1``) per host over already-open SSH connections,
all hosts in parallel: the physical floor of observing.

Also reported: the same with our connections already open (observe+plan
only), which separates the SSH handshakes from observing.
"""

from __future__ import annotations

import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from bench.common import Row, Sample, close_engines, cleanup, env_repo, log, measured, median, open_engines, \
    ratio_row

ENV = "bench-noop"
SERVICES = 20
LIMIT = 1.5


def services_yaml(image: str, count: int = SERVICES) -> str:
    out = []
    for i in range(1, count + 1):
        out.append(textwrap.dedent(f"""\
            s{i:02d}:
              image: {image}
              hosts: all
              health: {{type: running}}
              rollout: {{batch_size: 3}}
              stop_timeout: 2s
            """))
    return "".join(out)


def deploy_services(sb, repo) -> None:
    from reconciler.engine.deploy import deploy_target

    repo.commit(services_yaml(sb.images["v1"]), message="20 tiny services")
    t0 = time.perf_counter()
    result = deploy_target(repo.target(), report_progress=lambda *a, **k: None)
    if result.outcome is not None and result.outcome.result != "deployed":
        raise RuntimeError(f"setup deploy failed: {result.outcome.failure}")
    log(f"noop: deployed {SERVICES} services on {len(sb.hosts)} hosts in {time.perf_counter() - t0:.1f}s")


def ours_once(target, hosts_already=None) -> None:
    from reconciler.adapters import fleet
    from reconciler.core.plan import plan_deploy

    env = target.environment
    hosts = hosts_already or fleet.open_hosts(env.hosts, identity_file=target.identity_file,
                                              known_hosts_file=target.known_hosts_file)
    try:
        plan = plan_deploy(env, fleet.observe_all(hosts), target.revision)
        if not plan.in_sync:
            raise RuntimeError(f"no-op benchmark is not in sync: {plan.actions[:3]}")
    finally:
        if hosts_already is None:
            fleet.close_hosts(hosts)


def baseline_once(engines: dict) -> None:
    with ThreadPoolExecutor(max_workers=len(engines)) as pool:
        lists = list(pool.map(lambda d: d.engine.api.containers(all=True), engines.values()))
    assert all(isinstance(x, list) for x in lists)


def _measure(target, engines: dict, reps: int) -> tuple[list[Sample], list[Sample], list[Sample]]:
    from reconciler.adapters import fleet

    ours, warm, base = [], [], []
    env = target.environment
    opened = fleet.open_hosts(env.hosts, identity_file=target.identity_file, known_hosts_file=target.known_hosts_file)
    try:
        ours_once(target)  # warm-up: imports, first channels
        ours_once(target, opened)
        baseline_once(engines)
        for _ in range(reps):
            with measured(ours):
                ours_once(target)
            with measured(warm):
                ours_once(target, opened)
            with measured(base):
                baseline_once(engines)
    finally:
        fleet.close_hosts(opened)
    return ours, warm, base


def _rows(label: str, ours, warm, base, hosts: int, note: str = "") -> list[Row]:
    b_wall, b_cpu = median(s.wall for s in base), median(s.cpu for s in base)
    o_wall, o_cpu = median(s.wall for s in ours), median(s.cpu for s in ours)
    w_wall, w_cpu = median(s.wall for s in warm), median(s.cpu for s in warm)
    return [
        ratio_row(f"{label} wall (open+observe+plan)", o_wall, b_wall, LIMIT, note=note, hosts=hosts),
        ratio_row(f"{label} CPU (open+observe+plan)", o_cpu, b_cpu, LIMIT),
        ratio_row(f"{label} wall, connections open", w_wall, b_wall, LIMIT),
        ratio_row(f"{label} CPU, connections open", w_cpu, b_cpu, LIMIT),
    ]


def run(reps: int = 10, fifty: bool = True) -> list[Row]:
    from bench.common import sandbox

    sb = sandbox()
    repo = env_repo(sb, ENV)
    rows: list[Row] = []
    try:
        deploy_services(sb, repo)
        target = repo.target()
        engines = open_engines(sb)
        try:
            ours, warm, base = _measure(target, engines, reps)
        finally:
            close_engines(engines)
        rows += _rows("no-op 3x20", ours, warm, base, 3,
                      note=f"median of {reps}; baseline = GET /containers/json?all=1 per host, open SSH, parallel")
        if fifty:
            rows += run_fifty(sb, max(3, reps // 2))
    finally:
        cleanup(sb, f"{ENV}-")
    return rows


def run_fifty(sb, reps: int, total: int = 50) -> list[Row]:
    from bench.endpoints import extra_endpoints

    with extra_endpoints(sb, total) as (endpoints, lines):
        repo = env_repo(SimpleNamespace(hosts=endpoints, known_hosts_file=sb.known_hosts_file,
                                        identity_file=sb.identity_file), ENV)
        kh = repo.path / "environments" / ENV / "known_hosts"
        kh.write_text(kh.read_text() + "".join(line + "\n" for line in lines))
        repo.commit(services_yaml(sb.images["v1"]), message="same services, 50 endpoints")
        target = repo.target()
        access = [SimpleNamespace(name=e.name, ssh_access=_access(e, sb, str(kh))) for e in endpoints]
        engines = open_engines(sb, access)
        try:
            ours, warm, base = _measure(target, engines, reps)
        finally:
            close_engines(engines)
    return _rows(f"no-op {total} endpoints x20", ours, warm, base, total,
                 note=f"median of {reps}; {total} sshd endpoints (extra sshd listeners on ports 2201+ of the "
                      f"3 sandbox hosts) sharing 3 engines")


def _access(e, sb, known_hosts: str):
    from reconciler.adapters.ssh import SSHAccess

    return lambda timeout=10.0: SSHAccess(host=e.name, address=e.address, port=e.port, user=e.user,
                                          identity_file=sb.identity_file, known_hosts_file=known_hosts,
                                          timeout=timeout)
