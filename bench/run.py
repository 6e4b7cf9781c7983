"""Run every benchmark on the local fleet and print ONE table.

    .venv/bin/python bench/run.py                 # everything (make bench)
    .venv/bin/python bench/run.py --only noop,deploy --reps 2
    .venv/bin/python bench/run.py --only startup  # the CLI's start-up alone: no fleet needed
    .venv/bin/python bench/run.py --drop-db       # drop the cached backup databases and exit

Each figure is ``ours / baseline`` with both measured in this run.  A missed
target is a ``no`` in the table, never a failure: the exit status is 0
unless the harness itself could not run.  Progress goes to stderr, the
table to stdout (and to bench/results/latest.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, Row, log, table  # noqa: E402

FIGURES = ("startup", "noop", "oneshot", "deploy", "rollback", "router", "canary", "mirror", "backup", "agent", "peer")


def _figure(name: str, args) -> list[Row]:
    reps = args.reps
    if name == "startup":
        from bench import cli_startup

        return cli_startup.run(reps=reps or 20)
    if name == "noop":
        from bench import noop

        return noop.run(reps=reps or 10, fifty=not args.no_fifty)
    if name == "oneshot":
        from bench import oneshot

        return oneshot.run(reps=reps or 10)
    if name == "deploy":
        from bench import deploy

        return deploy.run(reps=reps or 5, profile=not args.no_profile)
    if name == "rollback":
        from bench import rollback

        return rollback.run(reps=reps or 5)
    if name == "router":
        from bench import router

        return router.run(reps=reps or 3)
    if name == "canary":
        from bench import canary

        return canary.run(reps=reps or 2)
    if name == "mirror":
        from bench import mirror

        return mirror.run(reps=reps or 1)
    if name == "backup":
        from bench import backup

        return backup.run(reps=reps or 3, size_mb=args.db_mb)
    if name == "agent":
        from bench import agent

        return agent.run(pushes=args.pushes, idle_seconds=args.idle_seconds)
    if name == "peer":
        from bench import peer

        return peer.run(reps=reps or 2)
    raise ValueError(name)


def run_figure(name: str, args) -> list[Row]:
    """One figure; on an error (the shared fleet may be cycled by another
    session) bring the fleet up again and retry once, then report ``n/a``."""
    for attempt in (1, 2):
        started = time.monotonic()
        try:
            rows = _figure(name, args)
            log(f"{name}: done in {time.monotonic() - started:.0f}s")
            return rows
        except Exception as exc:  # the table must still come out
            log(f"{name}: attempt {attempt} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            if attempt == 1:
                time.sleep(3)
                continue
            return [Row.na(name, "-", f"harness error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")]
    return []


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.platform()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated figures ({','.join(FIGURES)})")
    parser.add_argument("--reps", type=int, default=0, help="repetitions per figure (default: each figure's own)")
    parser.add_argument("--no-fifty", action="store_true", help="skip the 50-endpoint no-op variant")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled extra deploy")
    parser.add_argument("--db-mb", type=int, default=500, help="size of the large backup database (MB)")
    parser.add_argument("--pushes", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--drop-db", action="store_true", help="drop the cached backup databases and exit")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    if args.drop_db:
        from bench import backup

        backup.drop_cached()
        return 0
    names = args.only.split(",") if args.only else list(FIGURES)
    unknown = set(names) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {FIGURES}")

    started = time.monotonic()
    rows: list[Row] = []
    for name in names:
        log(f"{name}: start")
        rows += run_figure(name, args)
    elapsed = time.monotonic() - started
    text = table(rows)
    header = f"bench {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}; total {elapsed:.0f}s"
    print(header)
    print(text)
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.md").write_text(header + "\n\n" + text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
