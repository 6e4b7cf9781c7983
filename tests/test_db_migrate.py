"""Applying expand migrations and the dynamic check, against a real PostgreSQL."""

from __future__ import annotations

import threading

import psycopg
import pytest

import reconciler.adapters.db as db
from reconciler.adapters.db import MigrationFailed, applied_migrations, apply_expand, check_expand_on_scratch, pending
from reconciler.adapters.db.connection import with_database
from reconciler.adapters.db.testing import can_run_cluster, scratch_cluster
from reconciler.core.migrations import MigrationError, MigrationRefused, parse_files

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(not can_run_cluster(), reason="needs root and PostgreSQL server binaries"),
]

BASE = "CREATE TABLE users (id int PRIMARY KEY, name text, email text NOT NULL);\n"


@pytest.fixture(scope="module")
def cluster() -> str:
    with scratch_cluster() as (dsn, _):
        yield dsn


@pytest.fixture
def dsn(cluster: str, request: pytest.FixtureRequest) -> str:
    """A fresh database per test, with a users table and a row."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    with psycopg.connect(cluster, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    target = with_database(cluster, name)
    with psycopg.connect(target) as conn:
        conn.execute(BASE)
        conn.execute("INSERT INTO users VALUES (1, 'ada', 'ada@example.org')")
    yield target
    with psycopg.connect(cluster, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def files(*pairs: tuple[str, str]):
    return parse_files(pairs)


def columns(dsn: str, table: str = "users") -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position", (table,))]


def scratch_databases(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'reconciler_scratch_%'")]


def test_applies_pending_once_and_records_them(dsn: str) -> None:
    migrations = files(
        ("0001_nick.expand.sql", "ALTER TABLE users ADD COLUMN nick text;"),
        ("0002_index.expand.sql", "-- reconciler: transaction=off\n"
                                  "CREATE INDEX CONCURRENTLY users_nick ON users (nick);\n"
                                  "CREATE INDEX CONCURRENTLY users_name ON users (name);"),
        ("0003_drop_name.contract.sql", "ALTER TABLE users DROP COLUMN name;"),
    )
    done = apply_expand(dsn, migrations)
    assert [m.name for m in done] == ["0001_nick.expand.sql", "0002_index.expand.sql"]
    assert all(m.duration_ms >= 0 and m.attempts == 1 for m in done)
    assert columns(dsn) == ["id", "name", "email", "nick"]  # the contract file did not run
    assert apply_expand(dsn, migrations) == ()
    rows = applied_migrations(dsn)
    assert sorted(rows) == [1, 2] and rows[1].sha256 == migrations[0].sha256
    assert [m.name for m in pending(dsn, migrations)] == ["0003_drop_name.contract.sql"]


def test_changed_applied_file_is_an_error(dsn: str) -> None:
    apply_expand(dsn, files(("0001_nick.expand.sql", "ALTER TABLE users ADD COLUMN nick text;")))
    changed = files(("0001_nick.expand.sql", "ALTER TABLE users ADD COLUMN nick varchar(20);"))
    with pytest.raises(MigrationError, match=r"0001_nick.expand.sql:1: changed after it was applied"):
        apply_expand(dsn, changed)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        pending(dsn, changed)


def test_rows_unknown_to_the_running_code_are_allowed(dsn: str) -> None:
    apply_expand(dsn, files(("0001_a.expand.sql", "CREATE TABLE a (id int);"),
                            ("0002_b.expand.sql", "CREATE TABLE b (id int);")))
    older_code = files(("0001_a.expand.sql", "CREATE TABLE a (id int);"))
    assert pending(dsn, older_code) == ()
    assert apply_expand(dsn, older_code) == ()


def test_failing_file_rolls_back_and_names_the_line(dsn: str) -> None:
    broken = files(("0001_x.expand.sql", "CREATE TABLE x (id int);\nALTER TABLE nosuch ADD COLUMN y int;"))
    with pytest.raises(MigrationFailed, match=r"0001_x.expand.sql:2: failed: .*nosuch.*rolled back"):
        apply_expand(dsn, broken)
    assert columns(dsn, "x") == [] and applied_migrations(dsn) == {}


def test_half_applied_file_outside_a_transaction_says_so(dsn: str) -> None:
    broken = files(("0001_x.expand.sql", "-- reconciler: transaction=off\n"
                                         "CREATE TABLE x (id int);\nALTER TABLE nosuch ADD COLUMN y int;"))
    with pytest.raises(MigrationFailed, match=r":3: failed: .*HALF-APPLIED: 1 of 2.*reconciler db restore"):
        apply_expand(dsn, broken)


def test_lock_timeout_is_retried_then_applied(dsn: str) -> None:
    blocker = psycopg.connect(dsn)
    blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # held until commit
    release = threading.Timer(1.5, blocker.commit)
    release.start()
    try:
        (done,) = apply_expand(dsn, files(("0001_nick.expand.sql", "ALTER TABLE users ADD COLUMN nick text;")),
                               lock_timeout="300ms", retries=8)
    finally:
        release.join()
        blocker.close()
    assert done.attempts > 1 and done.lock_wait_ms > 0
    assert applied_migrations(dsn)[1].attempts == done.attempts


def test_lock_timeout_gives_up_after_bounded_retries(dsn: str) -> None:
    with psycopg.connect(dsn) as blocker:
        blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(MigrationFailed, match=r"still locked after 2 attempts"):
            apply_expand(dsn, files(("0001_nick.expand.sql", "ALTER TABLE users ADD COLUMN nick text;")),
                         lock_timeout="100ms", retries=1)


def test_advisory_lock_held_elsewhere_is_waiting(dsn: str) -> None:
    from reconciler.errors import LockHeld

    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (db.migrate.ADVISORY_KEY,))
        with pytest.raises(LockHeld):
            apply_expand(dsn, files(("0001_a.expand.sql", "CREATE TABLE a (id int);")), advisory_wait=0.5)


def test_apply_refuses_non_additive_statements(dsn: str) -> None:
    with pytest.raises(MigrationRefused, match=r"0001_d.expand.sql:1: DROP COLUMN email"):
        apply_expand(dsn, files(("0001_d.expand.sql", "ALTER TABLE users DROP COLUMN email;")))
    assert columns(dsn) == ["id", "name", "email"]


@pytest.mark.parametrize("sql, problem", [
    ("ALTER TABLE users ALTER COLUMN name TYPE varchar(10);", "users.name: type changed from text to character varying(10)"),
    ("ALTER TABLE users DROP COLUMN name;", "users.name: column removed or renamed"),
    ("ALTER TABLE users RENAME COLUMN name TO full_name;", "users.name: column removed or renamed"),
    ("ALTER TABLE users ALTER COLUMN name SET NOT NULL;", "users.name: became NOT NULL"),
    # Hidden from the static check in a DO block: only running it shows what it does.
    ("DO $$ BEGIN EXECUTE 'ALTER TABLE users RENAME name TO n'; END $$;", "users.name: column removed or renamed"),
])
def test_dynamic_check_catches_breaking_changes(dsn: str, sql: str, problem: str) -> None:
    migrations = files(("0001_ok.expand.sql", "ALTER TABLE users ADD COLUMN nick text;"),
                       ("0002_bad.expand.sql", sql))
    with pytest.raises(MigrationRefused) as caught:
        check_expand_on_scratch(dsn, migrations)
    assert caught.value.problems == (f"0002_bad.expand.sql: {problem}",)
    assert columns(dsn) == ["id", "name", "email"]  # production untouched
    assert scratch_databases(dsn) == []


def test_dynamic_check_passes_additive_changes_and_cleans_up(dsn: str) -> None:
    apply_expand(dsn, files(("0001_a.expand.sql", "CREATE TABLE a (id int);")))
    migrations = files(("0001_a.expand.sql", "CREATE TABLE a (id int);"),
                       ("0002_nick.expand.sql", "ALTER TABLE users ADD COLUMN nick text DEFAULT 'x' NOT NULL;"),
                       ("0003_idx.expand.sql", "-- reconciler: transaction=off\n"
                                               "CREATE INDEX CONCURRENTLY users_nick ON users (nick);"))
    check_expand_on_scratch(dsn, migrations)
    assert scratch_databases(dsn) == []
    assert columns(dsn) == ["id", "name", "email"]


def test_dynamic_check_reports_a_failing_file(dsn: str) -> None:
    with pytest.raises(MigrationRefused, match=r"on a copy of the schema: 0001_x.expand.sql:1: failed"):
        check_expand_on_scratch(dsn, files(("0001_x.expand.sql", "ALTER TABLE nosuch ADD COLUMN y int;")))
    assert scratch_databases(dsn) == []


def test_public_api() -> None:
    assert set(db.__all__) == {
        "AppliedMigration", "Backup", "BackupFailed", "DatabaseError", "MigrationFailed",
        "applied_migrations", "apply_expand", "backup", "check_expand_on_scratch", "list_backups",
        "pending", "prune_backups", "read_migrations", "verify", "command_runs", "mark_verified"}
    assert issubclass(db.BackupFailed, __import__("reconciler.errors").errors.StalledError)
