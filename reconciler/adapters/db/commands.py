"""Runs of ``migrations.command`` tools, recorded in ``reconciler_command_runs``.

A migration tool (Django's ``migrate``, Alembic, Flyway) keeps its own books
in the database; reconciler cannot read them.  What it can know is which
image ran the tool, in which phase, for which commit, and when: each run is a
row, written before the one-off container starts (exit unknown) and completed
after it exits.  Two decisions read these rows:

- a release older than an image that ran a contract is refused
  (``reconciler.core.contracts.older_than_contract``);
- a retry may reuse its commit's backup only while no migration ran since
  (``reconciler.adapters.db.backups.reusable``), and a command that ran is one.

The rows live in the database itself, so a restore of a backup taken before
a contract takes the contract's rows with it: the way back is a restore.
"""

from __future__ import annotations

import secrets

from reconciler.adapters.db.migrate import _connect
from reconciler.core.contracts import CommandRun, ImageFacts

TABLE = "reconciler_command_runs"
_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    token text NOT NULL UNIQUE,
    service text NOT NULL,
    phase text NOT NULL CHECK (phase IN ('expand', 'contract')),
    image text NOT NULL,
    image_id text NOT NULL,
    image_created text NOT NULL,
    commit text NOT NULL,
    host text NOT NULL,
    exit_code integer,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
)"""
_COLUMNS = "token, service, phase, image, image_id, image_created, commit, host, exit_code, started_at::text"


def command_runs(dsn: str, service: str | None = None) -> tuple[CommandRun, ...]:
    """The recorded runs, in the order they started; none when the table does not exist yet."""
    with _connect(dsn) as conn:
        if conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None:
            return ()
        where, params = ("WHERE service = %s", (service,)) if service else ("", ())
        rows = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} {where} ORDER BY id", params).fetchall()
    return tuple(CommandRun(*row) for row in rows)


def begin_run(dsn: str, *, service: str, phase: str, image: ImageFacts, commit: str, host: str) -> str:
    """Record that a command is about to run; return the run's token.  Written
    first, so a run whose exit is never seen still counts as one."""
    token = secrets.token_hex(8)
    with _connect(dsn) as conn:
        conn.execute(_CREATE)
        conn.execute(f"INSERT INTO {TABLE} (token, service, phase, image, image_id, image_created, commit, host)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                     (token, service, phase, image.reference, image.id, image.created, commit, host))
    return token


def end_run(dsn: str, token: str, exit_code: int) -> None:
    with _connect(dsn) as conn:
        conn.execute(f"UPDATE {TABLE} SET exit_code = %s, finished_at = now() WHERE token = %s", (exit_code, token))
