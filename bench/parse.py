"""Figure: refusing a hostile environment file (issue 12's bounded parsing).

Ours: ``schema.validate`` of a repository whose environment.yaml is 4 KB of
nested ``[`` after a key (the issue's file: 7.6 s before the bounds, refused
at 1:1), until it is refused at the bracket that passed the depth limit.
Baseline: ``schema.validate`` of a valid environment file of the same size
(the ordinary cost of reading 4 KB of YAML).  Median of interleaved runs;
no fleet needed.  Target: the refusal in under 50 ms.
"""

from __future__ import annotations

import time

from bench.common import Row, median, ms

TARGET = 0.050
SIZE = 4096


def _files(env_text: bytes) -> dict[str, bytes]:
    return {"environments/bench-parse/environment.yaml": env_text, "environments/bench-parse/known_hosts": b"# pinned keys\n"}


def _ordinary(size: int) -> bytes:
    head = "hosts:\n  h1: {address: 10.0.0.1, groups: [web]}\npolicy:\n  require_digest: false\nservices:\n"
    out, i = [head], 0
    while sum(map(len, out)) < size:
        out.append(f"  s{i}:\n    image: registry.example:5000/demo/web:v1\n    hosts: [web]\n    env: {{APP_ENV: bench}}\n")
        i += 1
    return "".join(out).encode()


def run(reps: int = 20) -> list[Row]:
    from reconciler.core.schema import Snapshot, validate

    hostile = Snapshot(files=_files(b"hosts: " + b"[" * (SIZE - 7)))
    ordinary = Snapshot(files=_files(_ordinary(SIZE)))
    refusal = validate(hostile)
    if not any("nested more than" in p for p in refusal):
        raise RuntimeError(f"the hostile file was not refused for its depth: {refusal}")
    if validate(ordinary):
        raise RuntimeError(f"the ordinary file does not validate: {validate(ordinary)}")
    ours, base = [], []
    for _ in range(reps):
        for snapshot, into in ((hostile, ours), (ordinary, base)):
            started = time.perf_counter()
            validate(snapshot)
            into.append(time.perf_counter() - started)
    o, b = median(ours), median(base)
    return [Row("refuse 4 KB of nested brackets", ms(o) if o >= 0.001 else f"{o * 1000:.2f} ms",
                ms(b) if b >= 0.001 else f"{b * 1000:.2f} ms", o / b if b > 0 else None, f"< {TARGET * 1000:.0f} ms",
                "yes" if o < TARGET else "no", f"refused at {refusal[0].split(': ')[0]}", dict(ours=o, baseline=b))]


if __name__ == "__main__":
    from bench.common import table

    print(table(run()))
