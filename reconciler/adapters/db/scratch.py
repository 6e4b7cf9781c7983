"""The dynamic expand check: apply pending expand files to a schema-only copy.

The static check reads statements; this one watches what they do.  Columns
are compared from ``information_schema.columns`` before and after each file,
so a removed, renamed, retyped or newly NOT NULL column is named together
with the file that did it, before production is touched.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterable

import psycopg
from psycopg import sql as pgsql

from reconciler.adapters.db.connection import DatabaseError, database_name, tool, tool_env, with_database
from reconciler.adapters.db.migrate import MigrationFailed, pending, run_file
from reconciler.core.migrations import MigrationFile, MigrationRefused

_COLUMNS = """
SELECT table_schema, table_name, column_name,
       format_type(a.atttypid, a.atttypmod) AS type, c.is_nullable
  FROM information_schema.columns c
  JOIN pg_attribute a ON a.attrelid = format('%I.%I', table_schema, table_name)::regclass
                     AND a.attname = c.column_name
 WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
"""

Columns = dict[tuple[str, str, str], tuple[str, str]]


def check_expand_on_scratch(dsn: str, files: Iterable[MigrationFile]) -> None:
    """Raise MigrationRefused if applying the pending expand files breaks a column.

    Makes a scratch database on the same server (the role needs CREATEDB),
    restores the schema only, applies, compares, and drops it in every case.
    """
    todo = pending(dsn, files, "expand")
    if not todo:
        return
    scratch = f"reconciler_scratch_{secrets.token_hex(4)}"
    with _admin(dsn) as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(scratch)))
    try:
        scratch_dsn = with_database(dsn, scratch)
        _copy_schema(dsn, scratch_dsn)
        problems = []
        with _admin(scratch_dsn) as conn:
            before = _columns(conn)
            for migration in todo:
                try:
                    run_file(conn, migration, retries=0)
                except MigrationFailed as exc:
                    problems.append(f"on a copy of the schema: {exc}")
                    break
                after = _columns(conn)
                problems += [f"{migration.name}: {p}" for p in compare_columns(before, after)]
                before = after
        if problems:
            raise MigrationRefused(problems)
    finally:
        with _admin(dsn) as admin:
            admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(scratch)))


def compare_columns(before: Columns, after: Columns) -> list[str]:
    """What about the columns that existed before would break a release using them."""
    problems = []
    for key, (old_type, old_nullable) in sorted(before.items()):
        schema, table, column = key
        where = f"{table}.{column}" if schema == "public" else f"{schema}.{table}.{column}"
        if key not in after:
            problems.append(f"{where}: column removed or renamed")
            continue
        new_type, new_nullable = after[key]
        if new_type != old_type:
            problems.append(f"{where}: type changed from {old_type} to {new_type}")
        if old_nullable == "YES" and new_nullable == "NO":
            problems.append(f"{where}: became NOT NULL")
    return problems


def _columns(conn: psycopg.Connection) -> Columns:
    return {(r[0], r[1], r[2]): (r[3], r[4]) for r in conn.execute(_COLUMNS).fetchall()}


def _copy_schema(source_dsn: str, target_dsn: str) -> None:
    dump = subprocess.Popen([tool("pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
                             "--no-password"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=tool_env(source_dsn))
    load = subprocess.run([tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"],
                          stdin=dump.stdout, capture_output=True, env=tool_env(target_dsn))
    assert dump.stdout is not None and dump.stderr is not None
    dump.stdout.close()
    dump_errors = dump.stderr.read().decode(errors="replace").strip()
    if dump.wait() != 0:
        raise DatabaseError(f"pg_dump --schema-only of {database_name(source_dsn)} failed: {dump_errors}")
    if load.returncode != 0:
        raise DatabaseError(f"loading the schema into the scratch database failed: "
                            f"{load.stderr.decode(errors='replace').strip()}")


def _admin(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot reach the database: {exc}".strip()) from exc
