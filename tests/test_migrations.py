"""Migration files: names, pragmas, and the static expand check (pure)."""

from __future__ import annotations

import ast as pyast
import pathlib

import pytest

from reconciler.errors import StalledError
from reconciler.core.migrations import (
    MigrationError,
    MigrationFile,
    MigrationRefused,
    check_expand,
    parse_files,
    parse_name,
    refusals_of,
    split_statements,
)


def expand(sql: str, name: str = "0002_change.expand.sql") -> MigrationFile:
    (migration,) = parse_files([(name, sql)])
    return migration


def refused(sql: str, name: str = "0002_change.expand.sql") -> list[str]:
    with pytest.raises(MigrationRefused) as caught:
        check_expand([expand(sql, name)])
    assert isinstance(caught.value, StalledError)
    return list(caught.value.problems)


def test_names_parse_and_order() -> None:
    assert parse_name("0007_add_email.expand.sql") == (7, "add_email", "expand")
    assert parse_name("0012_drop-old.contract.sql") == (12, "drop-old", "contract")
    files = parse_files([("0002_b.contract.sql", "DROP TABLE x;"), ("0001_a.expand.sql", "SELECT 1;"),
                         ("README.md", "not a migration")])
    assert [(m.version, m.phase) for m in files] == [(1, "expand"), (2, "contract")]
    assert files[0].transaction and len(files[0].sha256) == 64


@pytest.mark.parametrize("name", ["1_a.expand.sql", "0001_a.sql", "0001_A.expand.sql", "0001_a.up.sql",
                                  "abcd_a.expand.sql", "0001_.expand.sql"])
def test_malformed_names_are_rejected(name: str) -> None:
    with pytest.raises(MigrationError, match=rf"{name}:1: not a migration file name"):
        parse_files([(name, "")])


def test_duplicate_numbers_are_rejected_even_across_phases() -> None:
    with pytest.raises(MigrationError, match="0003 is also used by 0003_a.expand.sql"):
        parse_files([("0003_a.expand.sql", ""), ("0003_b.contract.sql", "")])


def test_pragmas() -> None:
    m = expand("-- create the index without blocking writes\n-- reconciler: transaction=off\n"
               "CREATE INDEX CONCURRENTLY i ON t (x);\n-- reconciler: transaction=on\n")
    assert not m.transaction  # a pragma after the first statement is not a header
    with pytest.raises(MigrationError, match=r"0002_change.expand.sql:1: unknown pragma 'transactions'"):
        expand("-- reconciler: transactions=off\n")
    with pytest.raises(MigrationError, match=r":2: pragma transaction must be one of on/off"):
        expand("\n-- reconciler: transaction=maybe\n")


def test_drop_column_is_refused_with_file_and_line() -> None:
    problems = refused("CREATE TABLE a (id int);\n\n-- old column\nALTER TABLE users\n  DROP COLUMN email;\n")
    assert problems == ["0002_change.expand.sql:4: DROP COLUMN email is a contract change: move it to a "
                        ".contract.sql file: ALTER TABLE users DROP COLUMN email"]


def test_rename_hidden_in_a_do_block_is_refused() -> None:
    sql = ("ALTER TABLE users ADD COLUMN nick text;\n"
           "DO $$\nBEGIN\n  EXECUTE 'ALTER TABLE users RENAME COLUMN name TO full_name';\nEND\n$$;\n")
    (problem,) = refused(sql)
    assert problem.startswith("0002_change.expand.sql:2: DO blocks cannot be checked")
    assert "RENAME COLUMN name TO full_name" in problem


def test_set_not_null_is_refused() -> None:
    (problem,) = refused("CREATE TABLE z (id int);\nALTER TABLE users ALTER COLUMN email SET NOT NULL;")
    assert problem.startswith("0002_change.expand.sql:2: SET NOT NULL on email")


@pytest.mark.parametrize("sql, reason", [
    ("DROP TABLE users;", "DROP is a contract change"),
    ("DROP INDEX CONCURRENTLY i;", "DROP is a contract change"),
    ("ALTER TABLE users RENAME COLUMN a TO b;", "RENAME breaks"),
    ("ALTER TABLE users RENAME TO people;", "RENAME breaks"),
    ("ALTER TABLE users ALTER COLUMN id TYPE bigint;", "ALTER COLUMN id TYPE"),
    ("ALTER TABLE users ADD COLUMN age int NOT NULL;", "NOT NULL without a DEFAULT"),
    ("ALTER TABLE users ADD CONSTRAINT c CHECK (age > 0);", "add NOT VALID"),
    ("ALTER TABLE users ADD CONSTRAINT u UNIQUE (email);", "CONCURRENTLY first"),
    ("ALTER TABLE users DROP CONSTRAINT c;", "DROP CONSTRAINT c"),
    ("ALTER TABLE users ALTER COLUMN a DROP DEFAULT;", "DROP DEFAULT"),
    ("CREATE INDEX i ON users (email);", "use CONCURRENTLY"),
    ("CREATE INDEX CONCURRENTLY i ON users (email);", "transaction=off"),
    ("UPDATE users SET a = 1;", "changing existing rows"),
    ("DELETE FROM users;", "changing existing rows"),
    ("TRUNCATE users;", "changing existing rows"),
    ("BEGIN;", "transaction control"),
    ("REVOKE SELECT ON users FROM app;", "REVOKE"),
    ("ALTER TYPE mood RENAME VALUE 'a' TO 'b';", "renaming an enum value"),
    ("VACUUM users;", "VacuumStmt is not on the expand allow-list"),
    ("SELEC 1;", "syntax error"),
])
def test_non_additive_statements_are_refused(sql: str, reason: str) -> None:
    (problem,) = refused("\n" + sql)
    assert problem.startswith("0002_change.expand.sql:2: ")
    assert reason in problem


def test_the_additive_list_is_allowed() -> None:
    sql = """-- reconciler: transaction=off
CREATE TABLE orders (id bigint PRIMARY KEY, user_id int NOT NULL, total numeric);
CREATE INDEX orders_user ON orders (user_id);
ALTER TABLE orders ADD CONSTRAINT orders_total CHECK (total >= 0);
ALTER TABLE users ADD COLUMN nickname text;
ALTER TABLE users ADD COLUMN active boolean NOT NULL DEFAULT true;
ALTER TABLE users ADD COLUMN score int DEFAULT 0, ADD COLUMN bio text;
CREATE INDEX CONCURRENTLY users_nickname ON users (nickname);
CREATE UNIQUE INDEX CONCURRENTLY users_email ON users (email);
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email;
ALTER TABLE users ADD CONSTRAINT users_score CHECK (score >= 0) NOT VALID;
ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;
ALTER TABLE users VALIDATE CONSTRAINT users_score;
ALTER TABLE users ALTER COLUMN score SET DEFAULT 1;
CREATE VIEW active_users AS SELECT id FROM users WHERE active;
CREATE OR REPLACE FUNCTION one() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
COMMENT ON COLUMN users.nickname IS 'shown instead of the name';
CREATE SEQUENCE invoice_numbers;
CREATE TYPE mood AS ENUM ('happy');
ALTER TYPE mood ADD VALUE 'sad';
GRANT SELECT ON active_users TO PUBLIC;
INSERT INTO orders VALUES (1, 1, 0);
SET lock_timeout = '1s';
"""
    migration = expand(sql)
    assert refusals_of(migration) == ()
    check_expand([migration])
    assert [line for line, _ in split_statements(migration)][:3] == [2, 3, 4]


def test_contract_files_are_not_checked() -> None:
    check_expand(parse_files([("0003_drop.contract.sql", "ALTER TABLE users DROP COLUMN email;")]))


def test_every_refusal_is_reported() -> None:
    problems = refused("DROP TABLE a;\nCREATE TABLE z (id int);\nDROP TABLE b;\n")
    assert [p.split(":")[1] for p in problems] == ["1", "3"]


def test_lines_count_characters_not_bytes() -> None:
    (problem,) = refused("COMMENT ON TABLE t IS 'héhé\n€';\nDROP TABLE t;")
    assert problem.startswith("0002_change.expand.sql:3:")


def test_module_is_pure() -> None:
    source = pathlib.Path(__file__).parents[1] / "reconciler" / "core" / "migrations.py"
    imported = set()
    for node in pyast.walk(pyast.parse(source.read_text())):
        if isinstance(node, pyast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, pyast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"psycopg", "subprocess", "docker", "fabric", "pygit2", "os", "socket"}


def test_read_migrations_reads_a_directory(tmp_path: pathlib.Path) -> None:
    from reconciler.adapters.db import read_migrations

    (tmp_path / "0002_b.contract.sql").write_text("DROP TABLE a;")
    (tmp_path / "0001_a.expand.sql").write_text("CREATE TABLE a (id int);")
    (tmp_path / "README").write_text("notes")
    assert [m.name for m in read_migrations(tmp_path)] == ["0001_a.expand.sql", "0002_b.contract.sql"]
