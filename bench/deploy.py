"""Figure: deploy overhead of one service, new image on 3 hosts, recreate (stop-first).

Ours: ``deploy.deploy_target`` of a commit that changes the image (v1 <-> v2,
alternating), from opening the hosts to the health verdict on every host.
Baseline: a plain script doing the same by hand with docker-py over SSH
connections it opens itself (the same pinned transport): per host, in
parallel, pull, stop and remove the old container, create and start the new
one, poll ``/health`` on the published port every 200 ms (the product's
interval) until it answers 200.

Both images are already on the hosts after the first round; both sides pull
anyway (the product skips a pull when the digest is present, the script asks
the engine, which answers at once).
"""

from __future__ import annotations

import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bench.common import PORT_DEPLOY, PORT_DEPLOY_BASE, Row, cleanup, env_repo, log, measured, median, \
    open_engines, close_engines, quiet, ratio_row

ENV = "bench-deploy"
BASE_NAME = "bench-deploy-base-web"
LIMIT = 1.2
INTERVAL = 0.2


def service_yaml(image: str, port: int = PORT_DEPLOY) -> str:
    return textwrap.dedent(f"""\
        web:
          image: {image}
          hosts: all
          ports: ["{port}:8080"]
          health: {{type: http, path: /health, interval: 200ms, successes: 1, deadline: 20s}}
          rollout: {{batch_size: 3, strategy: stop-first}}
          stop_timeout: 2s
        """)


def ours_once(repo, image: str) -> None:
    from reconciler.engine.deploy import deploy_target

    repo.commit(service_yaml(image), message=f"web {image.split(':')[-1][:20]}")
    target = repo.target()
    result = deploy_target(target, report_progress=quiet)
    if result.outcome is None or result.outcome.result != "deployed":
        raise RuntimeError(f"bench deploy did not deploy: {result.outcome and result.outcome.failure}")


def _healthy(address: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def baseline_once(sb, image: str) -> None:
    """The by-hand script: its own connections, then pull/stop/rm/run/poll per host."""
    engines = open_engines(sb)
    repository, _, digest = image.rpartition("@")
    repository = repository.rsplit(":", 1)[0]
    pull_ref = f"{repository}@{digest}"

    def one(host) -> None:
        api = engines[host.name].engine.api
        for _ in api.pull(repository, tag=digest, stream=True, decode=True):
            pass
        try:
            api.stop(BASE_NAME, timeout=2)
            api.remove_container(BASE_NAME, force=True)
        except Exception:
            pass  # first run: nothing to replace
        created = api.create_container(pull_ref, name=BASE_NAME, ports=[8080],
                                       host_config=api.create_host_config(port_bindings={8080: PORT_DEPLOY_BASE}),
                                       stop_timeout=2)
        api.start(created["Id"])
        deadline = time.monotonic() + 20
        while not _healthy(host.address, PORT_DEPLOY_BASE):
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline container on {host.name} never answered")
            time.sleep(INTERVAL)

    try:
        with ThreadPoolExecutor(max_workers=len(sb.hosts)) as pool:
            list(pool.map(one, sb.hosts))
    finally:
        close_engines(engines)


def run(reps: int = 5, profile: bool = True) -> list[Row]:
    from bench.common import sandbox

    sb = sandbox()
    repo = env_repo(sb, ENV)
    images = [sb.images["v2"], sb.images["v1"]]
    ours, base = [], []
    extra: dict = {}
    try:
        ours_once(repo, sb.images["v1"])  # setup: v1 everywhere, both sides
        baseline_once(sb, sb.images["v1"])
        for i in range(reps):
            image = images[i % 2]
            with measured(ours):
                ours_once(repo, image)
            with measured(base):
                baseline_once(sb, image)
        if profile:
            extra = profile_deploy(repo, images[reps % 2])
    finally:
        cleanup(sb, f"{ENV}-")
    o, b = median(s.wall for s in ours), median(s.wall for s in base)
    note = f"median of {reps} (v1<->v2); baseline = docker-py by hand, own SSH connections, HTTP poll every 200 ms"
    if extra.get("calls"):
        note += "; profiled deploy: " + extra["phases"] + "; Engine API calls: " + extra["calls"]
    return [ratio_row("deploy 1 svc x 3 hosts (stop-first)", o, b, LIMIT, note=note,
                      ours_cpu=median(s.cpu for s in ours), baseline_cpu=median(s.cpu for s in base), **extra)]


def profile_deploy(repo, image: str) -> dict:
    """One more deploy, instrumented: every Engine API request counted, the
    deploy's phases and each executor step timed (from the report events), and
    ``DockerHost.observe`` calls counted.  Written to bench/results/deploy-profile.txt."""
    import collections
    import re

    import requests

    from reconciler.engine import deploy as deploy_mod
    from reconciler.adapters import fleet
    from reconciler.adapters.hosts import DockerHost

    counts: collections.Counter = collections.Counter()
    phases: dict[str, float] = collections.defaultdict(float)
    observes = collections.Counter()
    steps: dict[tuple[str, str], float] = {}
    step_time: dict[str, list[float]] = collections.defaultdict(list)
    originals = {}

    def counting(self, request, **kwargs):
        path = re.sub(r"/v1\.\d+", "", request.path_url.split("?")[0])
        path = re.sub(r"/containers/(?!json\b)[^/]+", "/containers/{id}", path)
        path = re.sub(r"/images/.+/json", "/images/{ref}/json", path)
        counts[f"{request.method} {path}"] += 1
        return originals["send"](self, request, **kwargs)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - t0
        return wrapper

    def observe(self):
        observes[self.name] += 1
        return originals["observe"](self)

    def report(event, **fields):
        key = (fields.get("host", ""), fields.get("step", ""))
        if event == "begin":
            steps[key] = time.perf_counter()
        elif event in ("done", "failed") and key in steps:
            step_time[key[1]].append(time.perf_counter() - steps.pop(key))

    originals.update(send=requests.Session.send, observe=DockerHost.observe, open=fleet.open_hosts,
                     observe_all=fleet.observe_all, run_plan=deploy_mod.run_plan)
    requests.Session.send = counting
    DockerHost.observe = observe
    fleet.open_hosts = timed("open_hosts (SSH + first Engine API channel)", originals["open"])
    fleet.observe_all = timed("observe_all (before plan and after run)", originals["observe_all"])
    deploy_mod.run_plan = timed("run_plan (executor)", originals["run_plan"])
    try:
        repo.commit(service_yaml(image), message="web (profiled)")
        target = repo.target()
        t0 = time.perf_counter()
        result = deploy_mod.deploy_target(target, report_progress=report)
        wall = time.perf_counter() - t0
    finally:
        requests.Session.send = originals["send"]
        DockerHost.observe = originals["observe"]
        fleet.open_hosts = originals["open"]
        fleet.observe_all = originals["observe_all"]
        deploy_mod.run_plan = originals["run_plan"]
    if result.outcome is None or result.outcome.result != "deployed":
        raise RuntimeError("profiled deploy did not deploy")
    lines = [f"deploy_target wall {wall * 1000:.0f} ms"]
    lines += [f"  {name}: {sec * 1000:.0f} ms" for name, sec in phases.items()]
    lines += ["executor steps (per host, median ms; max):"]
    lines += [f"  {step}: {median(v) * 1000:.0f} ms (max {max(v) * 1000:.0f}) x{len(v)}" for step, v in step_time.items()]
    lines += [f"DockerHost.observe calls: {dict(observes)} (each = container list + image list)"]
    lines += [f"Engine API requests: {sum(counts.values())}"] + [f"  {n:3d} {k}" for k, n in counts.most_common()]
    from bench.common import REPO

    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "deploy-profile.txt").write_text("\n".join(lines) + "\n")
    log("deploy profile:\n" + "\n".join(lines))
    top = ", ".join(f"{n}x {k}" for k, n in counts.most_common(4))
    steps_short = ", ".join(f"{k} {median(v) * 1000:.0f} ms" for k, v in step_time.items())
    phase_short = ", ".join(f"{k.split(' ')[0]} {v * 1000:.0f} ms" for k, v in phases.items())
    return {"profile_wall": wall, "calls": f"{sum(counts.values())} total ({top})",
            "phases": f"{phase_short}; steps: {steps_short}"}
