"""Figures: mirroring live requests to green before the switch (``expose.mirror``), 3 hosts, under load.

Setup: an HAProxy of the bench's own per host (``tests.ownrouter.PrivateRouters``:
port 18340, admin 9951, so the shared routers are untouched) and the
counting demo image (it tells at ``/hits`` how many requests it answered
and how many were the mirror's copies).

- **green's share**: a deploy mv1 -> mv2 with ``mirror: {percent: 30, for: 15s}``
  through the engine, under bounded load (10 requests a second per host,
  each with its own id): of the requests that were at the router entirely
  while it mirrored (sent after ``StartMirror`` done, answered before
  ``StopMirror`` began), the share green got a copy of (green lists the
  ids it got), against the 30 % asked for, in standard deviations of the
  binomial; duplicate copies are counted too (target 0).
- **blue's p99 with / without mirroring**: the product's
  ``StartMirror``/``StopMirror`` steps toggled every second (60 blocks
  each, 30 %) while the load runs (20 requests a second per host): p99 of
  the blocks with mirroring over p99 of the blocks without, same run,
  interleaved.  Target <= 1.10.  Twice: to a green stand-in answering from
  its own HAProxy (what the copying costs blue's router path), and to a
  copy of the image on the same host (plus that copy's CPU, which every
  sandbox host shares with blue's on this machine's two cores).

Containers are ``bench-mirror-*``; host port 18341 (the spare, published so
its counts can be read).
"""

from __future__ import annotations

import time

from bench.common import Row, cleanup, env_repo, log, ms

ENV = "bench-mirror"
HOSTNAME = "bench.mirror.test"
PORT, ADMIN, SPARE_PORT = 18340, 9951, 18341
PERCENT = 30


def service(image: str, extra: str = "") -> str:
    from tests.bgfleet import exposed_web

    return exposed_web(image, HOSTNAME, interval="200ms", successes=1, drain="5s", deadline="30s", rollout=None,
                       expose=extra.strip())


def run(reps: int = 1) -> list[Row]:
    from bench.common import sandbox
    import math

    from bench.router import Events, _run
    from tests.bgfleet import write_environment
    from tests.mirrorfleet import Load, alternate_p99, copies, counting_images, tally
    from tests.ownrouter import PrivateRouters

    sb = sandbox()
    addresses = {h.name: h.address for h in sb.hosts}
    images = counting_images(sb.registry)
    repo = env_repo(sb, ENV)
    cleanup(sb, f"{ENV}-")
    with PrivateRouters(sb, PORT, ADMIN) as routers:
        try:
            write_environment(repo.path, ENV, sb, service(images["mv1"]), message="web mv1", router=routers.block())
            _run(repo.path, ENV, sb, "deploy", Events())
            write_environment(repo.path, ENV, sb, service(images["mv2"], f"mirror: {{percent: {PERCENT}, for: 15s}}"),
                              message="web mv2, mirrored first", router=routers.block())
            events = Events(clock=time.time)  # the load's samples are stamped with time.time()
            load = Load(addresses, PORT, HOSTNAME, rate=10.0, max_requests=2000, max_seconds=180, ids=True).start()
            try:
                _run(repo.path, ENV, sb, "deploy", events)
            finally:
                load.stop()
            window = copied = duplicates = 0
            for host, address in addresses.items():
                on = events.at("done", "StartMirror", host)[0], events.at("begin", "StopMirror", host)[-1]
                broad = events.at("begin", "StartMirror", host)[0], events.at("done", "StopMirror", host)[-1]
                t = tally([s for s in load.samples if s.host == host], copies(address, PORT, HOSTNAME), on, broad)
                window, copied, duplicates = window + t.eligible, copied + t.copied, duplicates + len(t.duplicates)
            failed = sum(1 for s in load.samples if s.status != 200)
            share = copied / window if window else 0.0
            sigmas = (copied - window * PERCENT / 100) / math.sqrt(window * PERCENT / 100 * (1 - PERCENT / 100)) \
                if window else float("nan")
            figures = {green: alternate_p99(sb, routers, images["mv1"], HOSTNAME, spare=f"{ENV}-spare",
                                            spare_port=SPARE_PORT, backend="web", port=PORT, green=green)
                       for green in ("responder", "spare")}
        finally:
            cleanup(sb, f"{ENV}-")
    log(f"mirror: share {share:.3f} ({copied}/{window}, {sigmas:+.1f} sigma, {duplicates} duplicates)")
    rows = [
        Row("mirror: green's share of live requests before the switch", f"{share:.1%}", f"{PERCENT}% asked",
            share / (PERCENT / 100), "within 4 sigma, 0 duplicates",
            "yes" if abs(sigmas) <= 4 and duplicates == 0 else "no",
            f"deploy with mirror: {{percent: {PERCENT}, for: 15s}}, 3 hosts, 10 req/s per host; green got a copy "
            f"of {copied} of the {window} requests at the router while it mirrored ({sigmas:+.1f} sigma of the "
            f"binomial), {duplicates} twice; {failed} failed requests",
            dict(ours=share, copied=copied, window=window, sigmas=sigmas, duplicates=duplicates, failed=failed)),
    ]
    for green, what in (("responder", "green a stand-in answering from its own HAProxy (the router's cost)"),
                        ("spare", "green a copy of the image on the same host (its CPU shared with blue's)")):
        samples, without, with_mirror, on_count, target_copies = figures[green]
        ratio = with_mirror / without
        log(f"mirror ({green}): p99 {ms(with_mirror)} with / {ms(without)} without")
        rows.append(Row(f"mirror: blue's p99 with mirroring / without, {green}", ms(with_mirror), ms(without), ratio,
                        "<= 1.10x", "yes" if ratio <= 1.10 else "no",
                        f"60+60 alternating 1 s blocks, 30 % mirrored, 20 req/s per host; {what}; {on_count} samples "
                        f"with, {len(samples) - on_count} without; {target_copies} copies arrived",
                        dict(ours=with_mirror, baseline=without, samples_on=on_count)))
    return rows

if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
