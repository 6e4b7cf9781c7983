"""Applying SQL migrations and tracking them in ``reconciler_migrations``.

Each applied file is a row with its SHA-256.  A file whose content changed
after it was applied is an error (the database no longer matches the code
that describes it).  Rows the running code does not know are fine: old code
must start against a newer schema, which is the point of expand/contract.
"""

from __future__ import annotations

import contextlib
import pathlib
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql as pgsql

from reconciler.adapters.db.connection import DatabaseError, redacted
from reconciler.errors import LockHeld, MigrationFailed
from reconciler.core.migrations import MigrationError, MigrationFile, check_expand, parse_files, split_statements

TABLE = "reconciler_migrations"
_CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    phase text NOT NULL CHECK (phase IN ('expand', 'contract')),
    sha256 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL,
    lock_wait_ms integer NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 1
)"""
# One key for every reconciler of this database: migrations never run twice at once.
ADVISORY_KEY = 0x7265636F6E63  # "reconc"


@dataclass(frozen=True)
class AppliedMigration:
    """One row of the tracking table."""

    version: int
    name: str
    phase: str
    sha256: str
    duration_ms: int
    lock_wait_ms: int = 0
    attempts: int = 1


def read_migrations(directory: pathlib.Path) -> tuple[MigrationFile, ...]:
    """The migration files of a directory (for files shipped in an image, copy them out first)."""
    directory = pathlib.Path(directory)
    return parse_files((p.name, p.read_text()) for p in sorted(directory.iterdir()) if p.is_file())


def applied_migrations(dsn: str) -> dict[int, AppliedMigration]:
    """The tracking table's rows by version; empty when the table does not exist yet."""
    with _connect(dsn) as conn:
        return _applied(conn)


def pending(dsn: str, files: Iterable[MigrationFile], phase: str | None = None) -> tuple[MigrationFile, ...]:
    """Files not yet applied, in order; raises MigrationError if an applied file changed."""
    with _connect(dsn) as conn:
        return _pending(_applied(conn), tuple(files), phase)


def apply_expand(dsn: str, files: Iterable[MigrationFile], *, lock_timeout: str = "2s",
                 retries: int = 5, advisory_wait: float = 60.0) -> tuple[AppliedMigration, ...]:
    """Apply the pending expand files under the advisory lock; return what was applied.

    Each file runs in one transaction unless its pragma says ``transaction=off``.
    A statement that cannot get its lock within ``lock_timeout`` is retried
    (the whole file when transactional) up to ``retries`` times with backoff,
    so a migration never queues behind a long query while blocking the
    application's own queries behind it.
    """
    return _apply_phase(dsn, tuple(files), "expand", lock_timeout=lock_timeout, retries=retries, advisory_wait=advisory_wait)


def apply_contract(dsn: str, files: Iterable[MigrationFile], *, lock_timeout: str = "2s",
                   retries: int = 5, advisory_wait: float = 60.0) -> tuple[AppliedMigration, ...]:
    """Apply the pending contract files under the advisory lock.

    Only the caller knows when a contract may run (soak time and an explicit
    flag: see reconciler.engine.contract); this applies them the way expand files are.
    """
    return _apply_phase(dsn, tuple(files), "contract", lock_timeout=lock_timeout, retries=retries, advisory_wait=advisory_wait)


def _apply_phase(dsn: str, files: tuple[MigrationFile, ...], phase: str, *, lock_timeout: str,
                 retries: int, advisory_wait: float) -> tuple[AppliedMigration, ...]:
    with _connect(dsn) as conn, _advisory_lock(conn, advisory_wait):
        conn.execute(_CREATE_TABLE)
        # Re-read under the lock: another agent may have applied some meanwhile.
        todo = _pending(_applied(conn), files, phase)
        if phase == "expand":
            check_expand(todo)  # callers check first; this keeps a direct call from skipping it
        done = []
        for migration in todo:
            result = run_file(conn, migration, lock_timeout=lock_timeout, retries=retries)
            conn.execute(
                f"INSERT INTO {TABLE} (version, name, phase, sha256, duration_ms, lock_wait_ms, attempts)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (result.version, result.name, result.phase, result.sha256, result.duration_ms,
                 result.lock_wait_ms, result.attempts))
            done.append(result)
        return tuple(done)


def run_file(conn: psycopg.Connection, migration: MigrationFile, *, lock_timeout: str = "2s",
             retries: int = 5) -> AppliedMigration:
    """Run one file's statements on an autocommit connection, retrying lock timeouts."""
    statements = split_statements(migration)
    conn.execute(pgsql.SQL("SET lock_timeout = {}").format(pgsql.Literal(lock_timeout)))
    started = time.monotonic()
    waited = 0.0
    attempts = 0
    index = 0  # the next statement to run; outside a transaction, earlier ones are committed
    while True:
        attempts += 1
        attempt_started = time.monotonic()
        try:
            if migration.transaction:
                with conn.transaction():
                    for index, (_, text) in enumerate(statements):
                        conn.execute(text)
                index = len(statements)
            else:
                while index < len(statements):
                    conn.execute(statements[index][1])
                    index += 1
            break
        except pgerrors.LockNotAvailable as exc:
            if attempts > retries:
                raise _failure(migration, statements, index, exc, f"still locked after {attempts} attempts") from exc
            waited += time.monotonic() - attempt_started
            pause = min(5.0, 0.2 * 2 ** attempts) * random.uniform(0.5, 1.0)
            time.sleep(pause)
            waited += pause
            if migration.transaction:
                index = 0
        except psycopg.Error as exc:
            raise _failure(migration, statements, index, exc, "failed") from exc
    return AppliedMigration(migration.version, migration.name, migration.phase, migration.sha256,
                            duration_ms=round((time.monotonic() - started) * 1000),
                            lock_wait_ms=round(waited * 1000), attempts=attempts)


def _failure(migration: MigrationFile, statements: tuple[tuple[int, str], ...], index: int,
             exc: psycopg.Error, what: str) -> MigrationFailed:
    line, text = statements[min(index, len(statements) - 1)]
    detail = (exc.diag.message_primary or str(exc)).strip()
    if migration.transaction:
        state = "rolled back, nothing of this file was applied"
    elif index == 0:
        state = "nothing of this file was applied"
    else:
        state = (f"HALF-APPLIED: {index} of {len(statements)} statements committed; the environment "
                 "needs a human (restore the pre-deploy backup with `reconciler db restore`)")
    return MigrationFailed(f"{migration.name}:{line}: {what}: {detail}: {' '.join(text.split())[:200]} ({state})")


def _pending(applied: dict[int, AppliedMigration], files: tuple[MigrationFile, ...],
             phase: str | None) -> tuple[MigrationFile, ...]:
    problems = []
    for migration in files:
        row = applied.get(migration.version)
        if row is None:
            continue
        if row.name != migration.name:
            problems.append(f"{migration.name}:1: version {migration.version:04d} was applied as {row.name}")
        elif row.sha256 != migration.sha256:
            problems.append(f"{migration.name}:1: changed after it was applied (applied sha256 "
                            f"{row.sha256[:12]}, now {migration.sha256[:12]}): add a new migration instead")
    if problems:
        raise MigrationError(problems)
    return tuple(m for m in files if m.version not in applied and (phase is None or m.phase == phase))


def _applied(conn: psycopg.Connection) -> dict[int, AppliedMigration]:
    if conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None:
        return {}
    rows = conn.execute(f"SELECT version, name, phase, sha256, duration_ms, lock_wait_ms, attempts "
                        f"FROM {TABLE} ORDER BY version").fetchall()
    return {row[0]: AppliedMigration(*row) for row in rows}


@contextlib.contextmanager
def advisory_lock(dsn: str, wait: float = 60.0) -> Iterator[None]:
    """Hold the migration lock for a block (a migration command runs under it,
    as files do): LockHeld when another migration holds it for ``wait`` s."""
    with _connect(dsn) as conn, _advisory_lock(conn, wait):
        yield


class _advisory_lock:
    """Session-level advisory lock, polled so a stuck holder gives LockHeld, not a hang."""

    def __init__(self, conn: psycopg.Connection, wait: float) -> None:
        self.conn, self.wait = conn, wait

    def __enter__(self) -> None:
        deadline = time.monotonic() + self.wait
        while not self.conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise LockHeld(f"another migration holds the advisory lock on this database "
                               f"(waited {self.wait:.0f}s)")
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))


def _connect(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot reach the database {redacted(dsn)}: {exc}".strip()) from exc
