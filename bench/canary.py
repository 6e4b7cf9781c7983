"""Figures: canary rollouts through each host's router (HAProxy), 3 hosts, under load.

Setup: one exposed service, ``rollout: {strategy: canary, steps: [10, 50,
100], pause: 3s, abort: {errors: 1%}}``, v1 deployed through the engine
(``engine.run``, what the agent and ``reconciler apply`` run), on a private
HAProxy per host (``tests.ownrouter``, ports 18490/19490: the sandbox's own
router is shared).  Each repetition, while the bounded load generator runs
(20 requests a second per host, a fresh connection each, the hosts'
addresses only):

- **canary to 100 %**: v1 -> v2 as a canary; failed requests counted
  (target 0).  Baseline: the same deploy switched blue-green (the
  service's rollout without the canary keys), same load, same run.
- **aborted canary**: v2 -> a release answering 30 % of its requests with a
  500 (``sandbox.error_image``); the canary aborts at 10 % and switches
  every host back.  Counted: failed requests after each host was restored
  (target 0), and every failed request of the run, against the baseline of
  the same release deployed blue-green (it turns healthy, so it serves
  every request until the next deploy: counted over the same number of
  seconds the canary run took).  Also timed: from the abort (the
  ``rollback`` event) to the bad release refused every request, a sticky
  client's too (``aborted``: it is in ``maint``), against the whole switch
  back (``restored``), which is when a drained release stopped taking a
  sticky client's requests before.
- **failed watch**: a release whose check fails 15 s after it starts,
  deployed blue-green with ``watch: 60s``: failed requests (target 0;
  blue runs as the router's standby during the watch).
"""

from __future__ import annotations

import time

from bench.common import Row, cleanup, env_repo, log

ENV = "bench-canary"
HOSTNAME = "bench.canary.test"
PORT, ADMIN_PORT = 18490, 19490
RATE = 20.0
CANARY = "{strategy: canary, steps: [10, 50, 100], pause: 3s, abort: {errors: 1%}}"
BLUE_GREEN = "{batch_size: 1}"


def _service(image: str, rollout: str, env: str = "") -> str:
    from tests.bgfleet import exposed_web

    return exposed_web(image, HOSTNAME, interval="200ms", successes=1, drain="5s", rollout=rollout, more=env)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _seconds(values: list[float]) -> str:
    return "n/a" if not values else f"{sum(values) / len(values):.3f} s"


def _ratio(ours: list[float], baseline: list[float]) -> float | None:
    return sum(ours) / sum(baseline) if ours and sum(baseline) > 0 else None


def run(reps: int = 2) -> list[Row]:
    from bench.common import sandbox
    from bench.router import Events, _run
    from reconciler.sandbox import error_image
    from tests import ownrouter
    from tests.bgfleet import write_environment
    from tests.loadgen import Load

    sb = sandbox()
    repo = env_repo(sb, ENV)
    routers = ownrouter.PrivateRouters(sb, PORT, ADMIN_PORT).start()
    errors_image = error_image.push(sb.registry, "demo/web")
    addresses = {h.name: h.address for h in sb.hosts}

    def deploy(image: str, rollout: str, expect: str = "deployed", load: bool = True, env: str = ""):
        write_environment(repo.path, ENV, sb, _service(image, rollout, env), message=f"{image} {rollout}",
                          router=routers.block())
        events = Events()
        if not load:
            _run(repo.path, ENV, sb, "deploy", events, expect=expect)
            return None, events
        with Load(addresses, HOSTNAME, rate=RATE, port=PORT, max_requests=4000, max_seconds=150.0) as generated:
            _run(repo.path, ENV, sb, "deploy", events, expect=expect)
        return generated, events

    figures = {k: [0, 0] for k in ("canary", "blue-green", "after-abort", "aborted", "bad-blue-green", "watch")}
    refused: list[float] = []  # per host and repetition: the abort to the bad release in maintenance
    switched: list[float] = []  # the abort to the end of the switch back

    def add(name: str, failed: int, total: int) -> None:
        figures[name][0] += failed
        figures[name][1] += total

    try:
        deploy(sb.images["v1"], CANARY, load=False)
        for rep in range(reps):
            log(f"canary: repetition {rep + 1}/{reps}")
            load, _ = deploy(sb.images["v2"], CANARY)
            add("canary", len(load.failures()), len(load.answers))
            load, _ = deploy(sb.images["v1"], BLUE_GREEN)
            add("blue-green", len(load.failures()), len(load.answers))
            deploy(sb.images["v2"], CANARY, load=False)
            started = time.time()
            load, events = deploy(errors_image, CANARY, expect="rolled-back")
            seconds = time.time() - started
            restored = {f["host"]: t for t, e, f in events.items if e == "restored"}
            offset = time.time() - time.perf_counter()  # the events' clock to the load's
            after = [a for a in load.answers if a.host in restored and a.started > restored[a.host] + offset]
            add("after-abort", sum(a.status != 200 for a in after), len(after))
            add("aborted", len(load.failures()), len(load.answers))
            abort = min(t for t, e, f in events.items if e == "rollback")
            for host, t in restored.items():
                out = [u for u, e, f in events.items if e == "aborted" and f.get("host") == host]
                if out:
                    refused.append(out[0] - abort)
                    switched.append(t - abort)
            # The baseline: the same release switched blue-green, over as many seconds.
            deploy(errors_image, BLUE_GREEN, load=False)
            with Load(addresses, HOSTNAME, rate=RATE, port=PORT, max_requests=int(RATE * seconds) + 1,
                      max_seconds=seconds, settle=0.0) as base:
                time.sleep(seconds)
            add("bad-blue-green", len(base.failures()), len(base.answers))
            deploy(sb.images["v2"], CANARY, load=False)
            # A release whose check fails 15 s after it starts, caught by the watch.
            load, _ = deploy(sb.images["v4-flaky"], "{batch_size: 3, watch: 60s}", expect="rolled-back",
                             env="  env: {FAIL_AFTER: '15'}")
            add("watch", len(load.failures()), len(load.answers))
    finally:
        cleanup(sb, f"{ENV}-")
        routers.stop()

    def cell(name: str) -> str:
        return f"{figures[name][0]}/{figures[name][1]}"

    aborted, bad = figures["aborted"][0], figures["bad-blue-green"][0]
    rows = [
        Row("canary to 100 % under load: failed requests", cell("canary"), cell("blue-green"), None, "0",
            "yes" if figures["canary"][0] == 0 else "no",
            f"{reps} canaries v1->v2 (10/50/100 %, 3 s pauses), 3 hosts, {RATE:g} req/s per host through each "
            f"host's router; baseline: the same deploys switched blue-green", dict(ours=figures["canary"][0])),
        Row("aborted canary: failed requests after the switch back", cell("after-abort"), "-", None, "0",
            "yes" if figures["after-abort"][0] == 0 else "no",
            f"{reps} canaries of a release failing 30 % of its requests, aborted at 10 % by the router's error "
            f"counters; requests begun after each host's restore", dict(ours=figures["after-abort"][0])),
        Row("aborted canary: requests failed by the bad release", cell("aborted"), cell("bad-blue-green"),
            aborted / bad if bad else None, "report the ratio", "n/a",
            "every failed request of the aborted canaries; baseline: the same release deployed blue-green, "
            "counted over as many seconds as each canary run took", dict(ours=aborted, baseline=bad)),
        Row("aborted canary: seconds from the abort to the bad release refused", _seconds(refused),
            _seconds(switched), _ratio(refused, switched), "ratio under 1",
            "n/a" if _ratio(refused, switched) is None else "yes" if _ratio(refused, switched) < 1 else "no",
            "per host: from the abort to the bad release in maint (no request reaches it, a sticky one neither); "
            "baseline: to the end of the switch back (a drained release kept a sticky client's requests until "
            "then)", dict(ours=_mean(refused), baseline=_mean(switched))),
        Row("failed watch: failed requests (blue the router's standby)", cell("watch"), "-", None, "0",
            "yes" if figures["watch"][0] == 0 else "no",
            f"{reps} blue-green deploys with a 60 s watch of a release whose check fails 15 s after it starts: "
            "the router sends requests to the standby (a backup server) the moment it goes DOWN, then the watch "
            "switches every host back", dict(ours=figures["watch"][0])),
    ]
    log(f"canary: {cell('canary')} failed (blue-green {cell('blue-green')}), after abort {cell('after-abort')}, "
        f"bad release {cell('aborted')} vs {cell('bad-blue-green')}")
    return rows
