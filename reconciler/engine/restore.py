"""The database restore as an engine operation (``reconciler db restore``).

Planned as two steps (``plan_restore``): a fresh verified backup, the way
back, then ``pg_restore`` of the chosen backup in one transaction.  The
chosen backup is found and verified while planning, before anything is
touched: a bad file must not replace good data.
"""

from __future__ import annotations

import pathlib
import subprocess
import time
from typing import Any

from reconciler.core.plan_steps import Action, RestoreDatabase
from reconciler.errors import StalledError
from reconciler.engine.state import RunState


def store_of(run: RunState) -> pathlib.Path:
    from reconciler.engine.dbphase import backup_dir

    return pathlib.Path(run.ctx.backup_dir) if run.ctx.backup_dir else backup_dir()


def find_backup(store: pathlib.Path, name: str):
    from reconciler.adapters.db import list_backups

    for item in list_backups(store):
        if str(item.path) == name or item.path.name == name or str(item.path.resolve()) == str(pathlib.Path(name).resolve()):
            return item
    raise StalledError(f"no backup {name!r} in {store} (one with a sidecar); list them with `reconciler db backups`")


def check_backup(run: RunState, name: str | None):
    from reconciler.adapters.db import verify
    from reconciler.adapters.db.connection import database_name
    from reconciler.engine.dbphase import database_connection

    if run.environment.database is None:
        raise StalledError(f"environment {run.env} declares no database at {run.commit[:12]}: add a database block")
    if not name:
        raise StalledError("db restore: name the backup to restore (see `reconciler db backups`)")
    item = find_backup(store_of(run), name)
    with database_connection(run.environment.database, run.hosts) as dsn:
        if item.database != database_name(dsn):
            raise StalledError(f"{item.path.name} is a backup of database {item.database}, but {run.env} uses "
                               f"{database_name(dsn)}: pick one of its own backups")
    verify(item)
    return item


def restore_into(dsn: str, dump: pathlib.Path) -> float:
    """``pg_restore --clean --if-exists`` in one transaction; return the seconds it took."""
    from reconciler.adapters.db import BackupFailed
    from reconciler.adapters.db.connection import database_name, tool, tool_env

    started = time.monotonic()
    result = subprocess.run([tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
                             "--exit-on-error", "--no-password", f"--dbname={database_name(dsn)}", str(dump)],
                            capture_output=True, text=True, env=tool_env(dsn))
    if result.returncode != 0:
        raise BackupFailed(f"pg_restore of {dump} failed; the database was left as it was (one transaction): "
                           f"{result.stderr.strip()}")
    _drop_bookkeeping_the_dump_lacks(dsn, dump)
    return round(time.monotonic() - started, 3)


def _drop_bookkeeping_the_dump_lacks(dsn: str, dump: pathlib.Path) -> None:
    """``pg_restore --clean`` leaves tables the dump does not have.  For the
    product's own tracking tables that would be a lie: a backup from before
    they existed, restored, must not still list the migrations and contract
    runs the restore undid."""
    import psycopg
    from psycopg import sql

    from reconciler.adapters.db.connection import tool, tool_env

    listing = subprocess.run([tool("pg_restore"), "-l", str(dump)], capture_output=True, text=True, env=tool_env(dsn))
    in_dump = {line.split()[-2] for line in listing.stdout.splitlines() if " TABLE " in line and not line.startswith(";")}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        ours = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'reconciler\\_%'")]
        for table in ours:
            if table not in in_dump:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


class WithRestore:
    """The database steps, plus RestoreDatabase."""

    def __init__(self, steps: Any, run: RunState) -> None:
        self.steps, self.run_state = steps, run
        self.restored: dict = {}

    def run(self, action: Action) -> None:
        if not isinstance(action, RestoreDatabase):
            self.steps.run(action)
            return
        item = find_backup(store_of(self.run_state), action.backup)
        seconds = restore_into(self.steps.dsn(), item.path)  # the database steps' one connection (or tunnel)
        self.restored = {"backup": str(item.path), "backup_commit": item.commit, "seconds": seconds}

    @property
    def result(self):
        return _Combined(self.steps.result, self.restored)

    def close(self) -> None:
        self.steps.close()


class _Combined:
    def __init__(self, phase, restored: dict) -> None:
        self.phase, self.restored = phase, restored

    def record(self) -> dict:
        out = self.phase.record() if self.phase is not None else {}
        return {**out, "restore": self.restored} if self.restored else out
