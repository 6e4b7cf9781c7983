"""SQL migration files: names, header pragmas and the static expand check.

Pure: text in, data or errors out; no database, no subprocess.

A migration is a file ``NNNN_slug.expand.sql`` or ``NNNN_slug.contract.sql``.
Numbers give one global order across both phases and must be unique.  The
header (leading comment lines) may carry pragmas::

    -- reconciler: transaction=off

An expand file must only add things, so the release before it keeps working
against the expanded schema (that is what makes a container rollback safe
without a down-migration).  ``check_expand`` parses it with PostgreSQL's own
parser (pglast) and accepts an allow-list of additive statements; anything
else is refused with ``file:line`` and the statement.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import pglast
from pglast import ast
from pglast.enums import AlterTableType, ConstrType, ObjectType

from reconciler.errors import MigrationError, MigrationRefused  # noqa: F401  (raised here; defined in the tree)

Phase = Literal["expand", "contract"]

_NAME_RE = re.compile(r"^(?P<version>\d{4,})_(?P<slug>[a-z0-9][a-z0-9_-]*)\.(?P<phase>expand|contract)\.sql$")
_PRAGMA_RE = re.compile(r"^--\s*reconciler:\s*(?P<body>.*)$")
_PRAGMAS = {"transaction": ("on", "off")}


@dataclass(frozen=True)
class MigrationFile:
    """One migration as shipped: identity from its name, content and pragmas."""

    version: int
    slug: str
    phase: Phase
    name: str  # the file name, used in messages and the tracking table
    sql: str
    transaction: bool = True

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class Refusal:
    """One statement a check refused."""

    file: str
    line: int
    reason: str
    statement: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}: {_one_line(self.statement)}"


def parse_name(name: str) -> tuple[int, str, Phase]:
    """``0007_add_email.expand.sql`` -> ``(7, "add_email", "expand")``."""
    match = _NAME_RE.match(name)
    if not match:
        raise MigrationError([f"{name}:1: not a migration file name: expected NNNN_slug.expand.sql "
                              "or NNNN_slug.contract.sql (lower-case slug)"])
    phase: Phase = "expand" if match["phase"] == "expand" else "contract"
    return int(match["version"]), match["slug"], phase


def parse_pragmas(name: str, sql: str) -> dict[str, str]:
    """Pragmas from the header comment lines, validated."""
    pragmas: dict[str, str] = {}
    problems = []
    for number, line in enumerate(sql.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break  # the header ends at the first statement
        match = _PRAGMA_RE.match(stripped)
        if not match:
            continue
        for item in filter(None, re.split(r"[\s,]+", match["body"])):
            key, _, value = item.partition("=")
            if key not in _PRAGMAS:
                problems.append(f"{name}:{number}: unknown pragma {key!r} (known: {', '.join(_PRAGMAS)})")
            elif value not in _PRAGMAS[key]:
                problems.append(f"{name}:{number}: pragma {key} must be one of {'/'.join(_PRAGMAS[key])}")
            else:
                pragmas[key] = value
    if problems:
        raise MigrationError(problems)
    return pragmas


def parse_files(files: Iterable[tuple[str, str]]) -> tuple[MigrationFile, ...]:
    """Migrations from ``(file name, content)`` pairs, in version order.

    Names that end in ``.sql`` must be migration names; other files (a README)
    are ignored.  Every problem is reported, not just the first.
    """
    problems: list[str] = []
    found: dict[int, MigrationFile] = {}
    for name, sql in files:
        if not name.endswith(".sql"):
            continue
        try:
            version, slug, phase = parse_name(name)
            pragmas = parse_pragmas(name, sql)
        except MigrationError as exc:
            problems.extend(exc.problems)
            continue
        if version in found:
            problems.append(f"{name}:1: migration number {version:04d} is also used by {found[version].name}")
            continue
        found[version] = MigrationFile(version, slug, phase, name, sql,
                                       transaction=pragmas.get("transaction", "on") == "on")
    if problems:
        raise MigrationError(sorted(problems))
    return tuple(found[v] for v in sorted(found))


def split_statements(migration: MigrationFile) -> tuple[tuple[int, str], ...]:
    """The file's statements as ``(1-based line, text)``; a syntax error raises."""
    return tuple((line, text) for line, text, _ in _parse(migration))


def check_expand(migrations: Iterable[MigrationFile]) -> None:
    """Raise MigrationRefused listing every non-additive statement of the expand files."""
    refusals = [str(r) for m in migrations if m.phase == "expand" for r in refusals_of(m)]
    if refusals:
        raise MigrationRefused(refusals)


def refusals_of(migration: MigrationFile) -> tuple[Refusal, ...]:
    """Why each refused statement of one expand file is refused (empty when it passes)."""
    try:
        statements = _parse(migration)
    except MigrationError as exc:
        line, _, message = exc.problems[0].partition(":")[2].partition(":")
        return (Refusal(migration.name, int(line), message.strip(), ""),)
    created: set[str] = set()
    refusals = []
    for line, text, node in statements:
        if isinstance(node, ast.CreateStmt):
            created.add(node.relation.relname)
        reason = _refuse(node, migration, created)
        if reason:
            refusals.append(Refusal(migration.name, line, reason, text))
    return tuple(refusals)


def _parse(migration: MigrationFile) -> list[tuple[int, str, ast.Node]]:
    sql = migration.sql
    try:
        raw = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        index = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        raise MigrationError([f"{migration.name}:{sql.count(chr(10), 0, index) + 1}: {exc.args[0]}"]) from None
    result = []
    for stmt in raw:
        start = stmt.stmt_location or 0
        # stmt_len 0 means "to the end of the input" (a last statement without ';').
        end = start + stmt.stmt_len if stmt.stmt_len else len(sql)
        text = sql[start:end]
        # Leading comments and blank lines belong to no statement: point at the first token.
        lead = re.match(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", text, re.S)
        skip = lead.end() if lead else 0
        result.append((sql.count("\n", 0, start + skip) + 1, text[skip:].strip(), stmt.stmt))
    return result


def _refuse(node: ast.Node, migration: MigrationFile, created: set[str]) -> str | None:
    """The reason to refuse one statement in an expand file, or None to allow it."""
    if isinstance(node, (ast.CreateStmt, ast.ViewStmt, ast.CreateFunctionStmt, ast.CommentStmt,
                         ast.CreateSeqStmt, ast.CreateEnumStmt, ast.CompositeTypeStmt,
                         ast.CreateSchemaStmt, ast.CreateExtensionStmt, ast.VariableSetStmt,
                         ast.InsertStmt)):
        return None
    if isinstance(node, ast.IndexStmt):
        if node.concurrent:
            if migration.transaction:
                return ("CREATE INDEX CONCURRENTLY cannot run in a transaction: "
                        "add the header '-- reconciler: transaction=off'")
            return None
        if node.relation.relname in created:
            return None  # a table made by this file is empty and unused: no lock to fear
        return "CREATE INDEX without CONCURRENTLY blocks writes to the table: use CONCURRENTLY"
    if isinstance(node, ast.AlterTableStmt):
        if node.objtype != ObjectType.OBJECT_TABLE:
            return f"ALTER {node.objtype.name.removeprefix('OBJECT_')} is not an additive change"
        for cmd in node.cmds:
            reason = _refuse_alter(cmd, node.relation.relname in created)
            if reason:
                return reason
        return None
    if isinstance(node, ast.AlterEnumStmt):
        return None if node.oldVal is None else "renaming an enum value breaks the running release"
    if isinstance(node, ast.GrantStmt):
        return None if node.is_grant else "REVOKE can break the running release"
    if isinstance(node, ast.DropStmt):
        return "DROP is a contract change: move it to a .contract.sql file"
    if isinstance(node, (ast.RenameStmt, ast.AlterObjectSchemaStmt)):
        return "RENAME breaks the running release: add the new name, backfill, drop the old in a contract"
    if isinstance(node, ast.DoStmt):
        return "DO blocks cannot be checked: write the statements out"
    if isinstance(node, ast.TransactionStmt):
        return "transaction control belongs to reconciler (use the transaction pragma)"
    if isinstance(node, (ast.UpdateStmt, ast.DeleteStmt, ast.TruncateStmt)):
        return "changing existing rows is not an additive change"
    return f"{type(node).__name__} is not on the expand allow-list"


def _refuse_alter(cmd: ast.AlterTableCmd, new_table: bool) -> str | None:
    kind = cmd.subtype
    if kind == AlterTableType.AT_AddColumn:
        column: ast.ColumnDef = cmd.def_
        types = {c.contype for c in column.constraints or ()}
        not_null = column.is_not_null or bool(types & {ConstrType.CONSTR_NOTNULL, ConstrType.CONSTR_PRIMARY})
        if not_null and ConstrType.CONSTR_DEFAULT not in types and not new_table:
            return (f"ADD COLUMN {column.colname} NOT NULL without a DEFAULT: the running release "
                    "inserts rows without it")
        return None
    if kind == AlterTableType.AT_AddConstraint:
        constraint: ast.Constraint = cmd.def_
        if constraint.contype in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN):
            if constraint.skip_validation or new_table:
                return None
            return "ADD CONSTRAINT without NOT VALID scans the table under lock: add NOT VALID"
        if constraint.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY):
            if constraint.indexname or new_table:
                return None
            return ("ADD CONSTRAINT UNIQUE/PRIMARY KEY builds an index under lock: CREATE UNIQUE INDEX "
                    "CONCURRENTLY first, then ADD CONSTRAINT ... USING INDEX")
        return f"ADD CONSTRAINT {constraint.contype.name.removeprefix('CONSTR_')} is not on the allow-list"
    if kind == AlterTableType.AT_ValidateConstraint:
        return None
    if kind == AlterTableType.AT_ColumnDefault:
        return None if cmd.def_ is not None else "DROP DEFAULT breaks inserts by the running release"
    if kind == AlterTableType.AT_DropColumn:
        return f"DROP COLUMN {cmd.name} is a contract change: move it to a .contract.sql file"
    if kind == AlterTableType.AT_AlterColumnType:
        return f"ALTER COLUMN {cmd.name} TYPE changes what the running release reads"
    if kind == AlterTableType.AT_SetNotNull:
        return f"SET NOT NULL on {cmd.name} breaks inserts by the running release"
    if kind == AlterTableType.AT_DropConstraint:
        return f"DROP CONSTRAINT {cmd.name} is a contract change"
    return f"ALTER TABLE {kind.name.removeprefix('AT_')} is not on the expand allow-list"


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 200 else flat[:197] + "..."
