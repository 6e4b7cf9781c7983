"""Figure: the pre-deploy backup of a database of at least 500 MB.

Ours: ``reconciler.adapters.db.backup`` (pg_dump -Fc -Z1 streamed through the agent's
process: hashed while written, fsynced, sidecar), run in a fresh Python
process so its peak RSS is the agent's memory for the backup.
Baseline: ``pg_dump -Fc -Z1 -f FILE`` by hand on the same database (the same
archive settings, so the ratio is the product's overhead; pg_dump fsyncs
its output file by default too).  Interleaved, median.

Memory: the backup process's peak RSS at two database sizes (100 MB and
500 MB); flat means streaming, never the dump held in memory.

The databases are generated once in the sandbox PostgreSQL with
generate_series and kept by name (``bench_backup_<N>mb``) so reruns are
fast; ``bench/run.py --drop-db`` drops them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Row, log, median, ratio_row

LIMIT = 1.05
RSS_LIMIT = 1.10  # peak RSS at 500 MB within 10% of that at 100 MB
CHUNK_ROWS = 1_000_000


def _dsn_for(dsn: str, db: str) -> str:
    from reconciler.adapters.db.connection import with_database

    return with_database(dsn, db)


def ensure_database(dsn: str, size_mb: int) -> str:
    """The cached database of at least ``size_mb`` MB; created and filled when missing."""
    import psycopg
    from psycopg import sql

    name = f"bench_backup_{size_mb}mb"
    with psycopg.connect(dsn, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = _dsn_for(dsn, name)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id bigint, body text, n int)")
        t0 = time.monotonic()
        while True:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            if size >= size_mb * 1_000_000:
                break
            start = conn.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()[0]
            # md5 text compresses about 2x: a realistic mix, not a best case.
            conn.execute("INSERT INTO items SELECT g, md5(g::text) || md5((g * 7)::text), g %% 1000 "
                         "FROM generate_series(%s::bigint + 1, %s::bigint + %s) g", (start, start, CHUNK_ROWS))
        if time.monotonic() - t0 > 1:
            log(f"backup: filled {name} to {size / 1e6:.0f} MB in {time.monotonic() - t0:.0f}s")
    return target


def drop_cached() -> None:
    import psycopg
    from psycopg import sql

    from bench.common import sandbox

    dsn = sandbox().database_dsn
    with psycopg.connect(dsn, autocommit=True) as admin:
        names = [r[0] for r in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_backup_%'")]
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            log(f"backup: dropped {name}")


_CHILD = """
import json, pathlib, resource, sys, time
sys.path.insert(0, sys.argv[3])
from reconciler.adapters.db import backup
t0 = time.perf_counter()
item = backup(sys.argv[1], pathlib.Path(sys.argv[2]), commit="0" * 40, environment="bench")
wall = time.perf_counter() - t0
me = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "size": item.size, "rss_kb": me.ru_maxrss, "cpu": me.ru_utime + me.ru_stime}))
"""


def ours_once(dsn: str, store: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, dsn, str(store), str(REPO)],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(store, ignore_errors=True)
    return result


def baseline_once(dsn: str, store: Path) -> dict:
    from reconciler.adapters.db.connection import tool, tool_env

    store.mkdir(parents=True, exist_ok=True)
    path = store / "by-hand.dump"
    t0 = time.perf_counter()
    subprocess.run([tool("pg_dump"), "-Fc", "-Z1", "--no-password", "-f", str(path)], check=True,
                   env=tool_env(dsn))
    wall = time.perf_counter() - t0
    size = path.stat().st_size
    shutil.rmtree(store, ignore_errors=True)
    return {"wall": wall, "size": size}


def run(reps: int = 2, size_mb: int = 500, small_mb: int = 100) -> list[Row]:
    from bench.common import sandbox

    dsn = sandbox().database_dsn
    if not dsn:
        return [Row.na("backup", f"<= {LIMIT}x", "the sandbox has no PostgreSQL")]
    small = ensure_database(dsn, small_mb)
    large = ensure_database(dsn, size_mb)
    scratch = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    try:
        ours, base = [], []
        ours_once(large, scratch / "warm")  # page cache warm for both sides
        for i in range(reps):
            ours.append(ours_once(large, scratch / f"o{i}"))
            base.append(baseline_once(large, scratch / f"b{i}"))
        rss_small = ours_once(small, scratch / "small")["rss_kb"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    o, b = median(r["wall"] for r in ours), median(r["wall"] for r in base)
    rss_large = max(r["rss_kb"] for r in ours)
    dump_mb = ours[0]["size"] / 1e6
    return [
        ratio_row(f"backup {size_mb} MB DB (dump {dump_mb:.0f} MB)", o, b, LIMIT,
                  note=f"median of {reps}; ours = reconciler.adapters.db.backup in its own process; baseline = "
                       f"pg_dump -Fc -Z1 -f by hand (same archive settings); CPU of the agent-side process "
                       f"(read pipe, sha256, write, fsync, incl. interpreter start) "
                       f"{median(r['cpu'] for r in ours):.2f} s per backup"),
        ratio_row(f"backup peak RSS, {size_mb} MB vs {small_mb} MB DB", rss_large / 1024, rss_small / 1024,
                  RSS_LIMIT, fmt=lambda mb: f"{mb:.0f} MB", target=f"<= {RSS_LIMIT:g}x (flat)",
                  note="peak RSS of the process running the backup (ru_maxrss); baseline column = the same at "
                       f"{small_mb} MB"),
    ]
