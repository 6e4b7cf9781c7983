"""Shared by every benchmark: the result row, the table, timing, fleet helpers.

Every figure is a ratio ``ours / baseline`` with both measured in the same
run, interleaved where possible, because these machines are noisy and
absolute times drift between runs.  A row never asserts: a missed target is
reported as ``no`` in the table and the run still exits 0.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.envrepo and reconciler, when run as a script
    sys.path.insert(0, str(REPO))

# Host ports the benchmarks may publish on the sandbox hosts (18300-18399).
PORT_NOOP = 18300  # unused: no-op services publish nothing (start-first)
PORT_DEPLOY = 18310
PORT_DEPLOY_BASE = 18311
PORT_ROLLBACK = 18320
PORT_ROLLBACK_BASE = 18321


@dataclass
class Row:
    """One line of the table."""

    figure: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    met: str  # yes | no | n/a
    note: str = ""
    extra: dict = field(default_factory=dict)  # raw numbers, for the README and the smoke test

    @classmethod
    def na(cls, figure: str, target: str, reason: str) -> "Row":
        return cls(figure, "n/a", "n/a", None, target, "n/a", reason)

    def cells(self) -> list[str]:
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}x"
        return [self.figure, self.ours, self.baseline, ratio, self.target, self.met]


HEADER = ["figure", "ours", "baseline", "ratio", "target", "met"]


def table(rows: list[Row]) -> str:
    """The one table ``bench/run.py`` prints (markdown, readable as plain text)."""
    cells = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    out = [line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells[1:]]
    notes = [f"- {r.figure}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:"] + notes
    return "\n".join(out)


# ------------------------------------------------------------------ timing
@dataclass
class Sample:
    wall: float
    cpu: float  # this process's CPU (user+system, every thread)


@contextlib.contextmanager
def measured(samples: list[Sample]):
    w0, c0 = time.perf_counter(), time.process_time()
    yield
    samples.append(Sample(time.perf_counter() - w0, time.process_time() - c0))


def median(values) -> float:
    return statistics.median(list(values))


def p(values, q: float) -> float:
    """The q-quantile (0..1), nearest rank: with 50 samples p99 is the max."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def ratio_row(figure: str, ours: float, base: float, limit: float, *, fmt: Callable[[float], str] = ms,
              extra_ok: bool = True, target: str | None = None, note: str = "", **extra) -> Row:
    ratio = ours / base if base > 0 else float("inf")
    met = "yes" if ratio <= limit and extra_ok else "no"
    return Row(figure, fmt(ours), fmt(base), ratio, target or f"<= {limit:g}x", met, note,
               dict(ours=ours, baseline=base, **extra))


# ------------------------------------------------------------------ fleet
def sandbox():
    """The shared fleet (idempotent ``up``; never ``down``: others use it)."""
    from reconciler.sandbox import fleet

    return fleet.up(3)


def env_repo(sb, env: str):
    """A fresh environment repository for ``env`` in a temporary directory."""
    from tests.envrepo import make_env_repo

    root = Path(tempfile.mkdtemp(prefix=f"{env}-", dir=os.environ.get("BENCH_TMP")))
    return make_env_repo(root / "repo", sb, env)


def open_engines(sb, hosts=None) -> dict:
    """Engine API clients over freshly opened (pinned) SSH connections, in parallel:
    the same transport the product uses, without the product around it."""
    from concurrent.futures import ThreadPoolExecutor

    from reconciler.adapters.hosts import DockerHost
    from reconciler.adapters.ssh import connect

    hosts = list(hosts or sb.hosts)

    def one(h):
        return DockerHost(h.name, connect(h.ssh_access()))

    with ThreadPoolExecutor(max_workers=max(1, min(64, len(hosts)))) as pool:
        return dict(zip((h.name for h in hosts), pool.map(one, hosts)))


def close_engines(engines: dict) -> None:
    for d in engines.values():
        with contextlib.suppress(Exception):
            d.close()


def cleanup(sb, prefix: str) -> None:
    """Remove every container whose name starts with ``prefix`` (local sockets)."""
    from tests.envrepo import remove_containers

    remove_containers(sb, prefix)


def quiet(*args, **kwargs) -> None:
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
