"""The database phase: the plan's CheckMigrations, Backup and Migrate steps.

``DatabaseSteps`` runs them for the executor (``Executor(..., database=steps)``)
one at a time, in plan order, after pre-flight (every new image is pulled on
its hosts) and before the first container changes, so a refusal or failure
here leaves every host, and the schema, as they were.  It keeps what one
step learns for the next:

``CheckMigrations(host, service, phase)``
    read the migration files from the NEW image on ``host`` (a created, never
    started container): the code that needs the schema carries it, so what
    is checked is exactly what ships; refuse a release older than a contract
    that already ran (files: the image's files stop below it; a command: the
    image predates the one that ran the contract); work out what is pending
    across every service sharing the database; for ``expand``, the static
    check (pure and cheap, so a refused file costs no backup).
``Backup(database, required)``
    a backup named for the commit, and its verification (a full restore to
    nowhere): no verified backup, no migration and no deploy.  A retry of the
    same commit and phase reuses that commit's verified backup while no
    migration but the run's own ran since; with ``required=False`` (policy
    ``backup: when-migrating``) there is none when nothing is pending and no
    migration command runs.
``Migrate(host, service, phase)``
    files: the dynamic check on a schema-only scratch copy (expand), then
    apply under the advisory lock, in one global order across the services
    sharing the database (the phase's first Migrate applies them all); a
    ``migrations.command``: run it in a one-off container of the new image on
    ``host``, told the phase by ``RECONCILER_MIGRATION_PHASE``, under the
    advisory lock, recorded with the image's id and creation time
    (``adapters.db.commands``).

The DSN (through a ``via_host`` tunnel) is opened by the first step that
needs it and closed by ``close()``.  ``result`` is the ``PhaseResult`` for the
record.  What the steps need from a host goes through the ``DatabaseHost``
seam (``adapters.db.images``), so all this runs on fake hosts in tests.

Errors (all raised before any container changes): ``BackupFailed``,
``MigrationRefused``/``MigrationError``, ``MigrationFailed``,
``DatabaseError``, ``ContractRollbackRefused`` (stalled), ``LockHeld``
(waiting), and ``HostUnreachable``/``EngineError`` (transient).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping

from reconciler.adapters.db import backups as backup_store
from reconciler.adapters.db import commands as command_log
from reconciler.adapters.db import (
    BackupFailed,
    DatabaseError,
    MigrationFailed,
    applied_migrations,
    apply_expand,
    backup,
    check_expand_on_scratch,
    pending,
    prune_backups,
    verify,
)
from reconciler.adapters.db.connection import database_name, with_database
from reconciler.adapters.db.images import LABEL_ROLE, DatabaseHost, database_host
from reconciler.adapters.db.migrate import advisory_lock, apply_contract
from reconciler.core import contracts
from reconciler.core.contracts import ImageFacts
from reconciler.core.migrations import MigrationError, MigrationFile, check_expand, parse_files
from reconciler.core.model import Database, Environment, Service
from reconciler.core.plan_steps import Backup, CheckMigrations, Migrate
from reconciler.errors import ContractRollbackRefused, StalledError

BACKUP_DIR_ENV = "RECONCILER_BACKUP_DIR"
DEFAULT_BACKUP_DIR = "/var/lib/reconciler/backups"
PHASE_ENV = "RECONCILER_MIGRATION_PHASE"
COMMAND_TIMEOUT = 1800.0  # a migration command that has not exited in 30 min needs a human

Reporter = Callable[..., None]


def _quiet(event: str, **fields: Any) -> None:
    pass


@dataclass(frozen=True)
class PhaseResult:
    """What the database phase did, for the outcome and the note in git."""

    backup: str | None = None  # path of the verified backup
    backup_sha256: str | None = None
    backup_seconds: float = 0.0
    applied: tuple[str, ...] = ()  # file names, or "command:<service>"
    lock_wait_ms: int = 0
    skipped: str | None = None  # why nothing was done
    backup_reused: bool = False  # this commit's backup from an earlier attempt, no migration since

    def record(self) -> dict:
        return {k: v for k, v in {
            "backup": self.backup, "backup_sha256": self.backup_sha256,
            "backup_seconds": self.backup_seconds, "migrations": list(self.applied),
            "lock_wait_ms": self.lock_wait_ms, "skipped": self.skipped,
            "backup_reused": self.backup_reused,
        }.items() if v not in (None, [], 0, 0.0, False)}

    def summary(self) -> str:
        if self.skipped:
            return f"database: {self.skipped}"
        if self.backup:
            verb = "reused (no migration since it was taken)" if self.backup_reused else "verified"
            parts = [f"backup {pathlib.Path(self.backup).name} {verb}"]
        else:
            parts = ["no backup"]
        parts.append("applied " + ", ".join(self.applied) if self.applied else "no migration pending")
        return "database: " + "; ".join(parts)


class DatabaseSteps:
    """Runs the database steps of one plan (see the module docstring).  Not
    thread-safe: the executor hands it one step at a time."""

    def __init__(self, environment: Environment, hosts: Mapping[str, Any], commit: str, *,
                 store_dir: pathlib.Path | None = None, report: Reporter = _quiet) -> None:
        self.environment, self.hosts, self.commit = environment, hosts, commit
        self.store_dir = pathlib.Path(store_dir) if store_dir else None
        self.report = report
        self.result = PhaseResult()
        self._stack = contextlib.ExitStack()
        self._dsn: str | None = None
        self._phase: str | None = None
        self._shipped: dict[str, tuple[MigrationFile, ...]] = {}  # service -> files its new image ships
        self._commands: dict[str, ImageFacts] = {}  # service with a command -> its new image
        self._checked: set[str] = set()
        self._pending: tuple[MigrationFile, ...] = ()  # of the phase, across services, in order
        self._backup: backup_store.Backup | None = None
        self._files_done = False

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "DatabaseSteps":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database tunnel, if one was opened.  Safe to call twice."""
        self._dsn = None
        self._stack.close()

    def dsn(self) -> str:
        if self._dsn is None:
            self._dsn = self._stack.enter_context(database_connection(self._database(), self.hosts))
        return self._dsn

    # ------------------------------------------------------------ steps
    def run(self, action: Any) -> None:
        if isinstance(action, CheckMigrations):
            self._check(action.host, self.environment.service(action.service), action.phase)
        elif isinstance(action, Backup):
            self._backup_step(action)
        elif isinstance(action, Migrate):
            self._migrate(action)
        else:
            raise TypeError(f"DatabaseSteps runs CheckMigrations, Backup and Migrate, not {action.step}")

    def _database(self, service: Service | None = None) -> Database:
        database = self.environment.database
        if database is None:
            who = f"service {service.name} declares migrations but " if service else ""
            raise StalledError(f"{who}environment {self.environment.name} declares no database: add a database block")
        return database

    def _set_phase(self, phase: str) -> None:
        if self._phase not in (None, phase):
            raise ValueError(f"one run migrates one phase: {self._phase}, then {phase}")
        self._phase = phase

    def _host(self, name: str) -> DatabaseHost:
        return database_host(self.hosts[name])

    def _check(self, host: str, service: Service, phase: str) -> None:
        if service.migrations is None:
            raise ValueError(f"CheckMigrations for {service.name}, which declares no migrations")
        self._database(service)
        self._set_phase(phase)
        dsn = self.dsn()
        driver = self._host(host)
        if service.migrations.path:
            shipped = parse_files(driver.read_image_files(service.image, service.migrations.path))
            refuse_older_release(dsn, service, shipped)
            self._shipped[service.name] = shipped
        if service.migrations.command:
            facts = driver.image_facts(service.image)
            refuse_older_command_release(dsn, service, facts)
            self._commands[service.name] = facts
        self._checked.add(service.name)
        merged = merge_files([f for files in self._shipped.values() for f in files])
        self._pending = pending(dsn, merged, phase)  # raises if an applied file changed
        if phase == "expand":
            check_expand(self._pending)
        checked = ", static check passed" if phase == "expand" else ""
        self.report("done", step="db-check", service=service.name,
                    reason=f"{len(self._pending)} {phase} file(s) pending{checked}")

    def _backup_step(self, action: Backup) -> None:
        self._database()
        phase = self._phase or "expand"
        if not action.required and not self._pending and not self._commands:
            self.result = replace(self.result, skipped=f"no {phase} migration pending: no backup (backup: when-migrating)")
            self.report("done", step="db-backup", reason=self.result.skipped)
            return
        dsn = self.dsn()
        store = self.store_dir or backup_dir()
        state = migration_state(dsn)
        # The fresh backup before a restore must hold the data as it is now: never reused.
        found, why = reusable_backup(store, dsn, self.environment.name, self.commit, phase, state) if action.reuse else (None, None)
        if found is not None:
            self._backup = found
            self.result = replace(self.result, backup=str(found.path), backup_sha256=found.sha256, backup_reused=True)
            self.report("done", step="db-backup", reason=f"{found.path} of this commit reused: no migration ran since")
            return
        if why:
            self.report("done", step="db-backup", reason=f"a new backup: this commit's earlier one {why}")
        record = state.record(intended_files=[m.name for m in self._pending], intended_commands=list(self._commands))
        started = time.monotonic()
        self._backup = _take(dsn, self.environment, self.commit, store, phase=phase, migrations=record)
        self.result = replace(self.result, backup=str(self._backup.path), backup_sha256=self._backup.sha256,
                              backup_seconds=round(time.monotonic() - started, 3))
        self.report("done", step="db-backup", reason=f"{self._backup.path} verified in {self.result.backup_seconds:.1f}s")

    def _migrate(self, action: Migrate) -> None:
        service = self.environment.service(action.service)
        if service.name not in self._checked:
            self._check(action.host, service, action.phase)  # a plan without CheckMigrations still checks
        self._set_phase(action.phase)
        files_due = bool(service.migrations.path and self._pending and not self._files_done)
        if (files_due or service.migrations.command) and self._backup is None:
            raise StalledError(f"{service.name}: {action.phase} migrations without a verified backup in this run "
                               "(no verified backup, no migration): the plan needs a Backup step before Migrate")
        applied: tuple[str, ...] = ()
        lock_wait = 0
        if files_due:
            dsn = self.dsn()
            merged = merge_files([f for files in self._shipped.values() for f in files])
            if action.phase == "expand":
                check_expand_on_scratch(dsn, merged)
                self.report("done", step="db-check", service=service.name, reason="dynamic check on a scratch copy passed")
                done = apply_expand(dsn, merged)
            else:
                done = apply_contract(dsn, merged)
            self._files_done = True
            applied += tuple(m.name for m in done)
            lock_wait = sum(m.lock_wait_ms for m in done)
        if service.migrations.command:
            self._run_command(action.host, service, action.phase)
            applied += (f"command:{service.name}",)
        self.result = replace(self.result, applied=self.result.applied + applied,
                              lock_wait_ms=self.result.lock_wait_ms + lock_wait)
        self.report("done", step="db-migrate", service=service.name,
                    reason=("applied " + ", ".join(applied)) if applied else f"no {action.phase} migration pending")

    def _run_command(self, host: str, service: Service, phase: str) -> None:
        driver = self._host(host)
        facts = self._commands.get(service.name) or driver.image_facts(service.image)
        from reconciler.adapters import secrets

        argv = list(service.migrations.command)
        where = f"{host}: {service.name} migration command {' '.join(argv)} ({phase})"
        if any(s.delivery == "file" for s in service.secrets):
            raise StalledError(f"{where}: a secret delivered as: file does not reach a one-off migration container; "
                               "deliver the secrets the migration needs as env")
        # The same variables the service's containers get, decrypted in memory only.
        env = {**dict(service.env), **secrets.env_values(service, driver.read_secret_file, where)}
        env[PHASE_ENV] = phase
        dsn = self.dsn()
        with advisory_lock(dsn):
            # Recorded before it starts: a run whose exit is never seen still counts.
            token = command_log.begin_run(dsn, service=service.name, phase=phase, image=facts,
                                          commit=self.commit, host=host)
            code, logs = driver.run_one_off(service.image, argv, env=env,
                                            network=service.networks[0] if service.networks else None,
                                            labels={LABEL_ROLE: phase}, timeout=COMMAND_TIMEOUT)
            command_log.end_run(dsn, token, code)
        if code != 0:
            after = "nothing was deployed" if phase == "expand" else "the running release is unchanged"
            raise MigrationFailed(f"{where}: exit {code}; {after}. Its output:\n{logs}")


# ------------------------------------------------------------ the database


def backup_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(BACKUP_DIR_ENV) or DEFAULT_BACKUP_DIR)


@contextlib.contextmanager
def database_connection(database: Database, hosts: Mapping[str, Any]) -> Iterator[str]:
    """The DSN to use for this run: as written, or through ``via_host``'s
    SSH connection (a loopback tunnel, closed when the block ends)."""
    dsn = database_dsn(database)
    if not database.via_host:
        yield dsn
        return
    from reconciler.adapters.db.images import tunnel_for

    with tunnel_for(dsn, hosts, database.via_host) as tunnel:
        yield tunnel.dsn(dsn)


def database_dsn(database: Database) -> str:
    """The DSN from the file the environment names (never from the repository),
    as written there: reach it through ``database_connection``."""
    if not database.dsn_file:
        raise DatabaseError("database: no dsn_file; write the DSN to a file on the agent's machine "
                            "(mode 0600) and name it in database.dsn_file")
    try:
        dsn = pathlib.Path(database.dsn_file).read_text().strip()
    except OSError as exc:
        raise DatabaseError(f"database.dsn_file {database.dsn_file}: {exc.strerror or exc}; "
                            "create it on the agent's machine, readable by the agent") from exc
    if not dsn:
        raise DatabaseError(f"database.dsn_file {database.dsn_file} is empty; write the DSN into it")
    return with_database(dsn, database.name) if database.name else dsn


@dataclass(frozen=True)
class MigrationState:
    """What a backup records to tell, later, whether it is still current."""

    files: dict  # applied file name -> sha256
    runs: tuple[contracts.CommandRun, ...]
    tables: dict  # schema.table -> oid

    def record(self, *, intended_files, intended_commands) -> dict:
        return backup_store.migration_record(self.files, [r.token for r in self.runs], intended_files=intended_files,
                                             intended_commands=intended_commands, tables=self.tables)

    def changed_since(self, item: backup_store.Backup, *, commit: str, phase: str) -> str | None:
        return backup_store.changed_since(item.migrations, self.files, self.runs, commit=commit, phase=phase,
                                          tables=self.tables)


def migration_state(dsn: str) -> MigrationState:
    """The applied files, the migration command runs and the tables, now."""
    files = {row.name: row.sha256 for row in applied_migrations(dsn).values()}
    return MigrationState(files, command_log.command_runs(dsn), backup_store.table_oids(dsn))


def reusable_backup(store: pathlib.Path, dsn: str, environment: str, commit: str, phase: str,
                    state: MigrationState) -> tuple[backup_store.Backup | None, str]:
    """This commit's newest verified backup for ``phase`` that no migration
    but its own run's has overtaken, or (None, why the newest one is not)."""
    why = ""
    candidates = [b for b in backup_store.list_backups(store, database_name(dsn))
                  if b.commit == commit and b.environment == environment and b.phase == phase]
    for item in reversed(candidates):
        if not item.verified:
            why = why or f"({item.path.name}) never verified"
            continue
        try:
            intact = item.path.stat().st_size == item.size
        except OSError:
            intact = False
        if not intact:
            why = why or f"({item.path.name}) is missing or changed size"
            continue
        changed = state.changed_since(item, commit=commit, phase=phase)
        if changed is None:
            return item, ""
        why = why or f"({item.path.name}) is out of date: {changed}"
    return None, why


def _take(dsn: str, environment: Environment, commit: str, store: pathlib.Path, *, phase: str,
          migrations: dict | None) -> backup_store.Backup:
    """Backup, verify, prune this database's backups of this environment;
    raise BackupFailed when there is no verified backup."""
    item = backup(dsn, store, commit=commit, environment=environment.name, phase=phase, migrations=migrations)
    try:
        verify(item)
    except BackupFailed:
        # An unverifiable dump must never be offered for a restore later.
        item.sidecar.unlink(missing_ok=True)
        raise
    item = backup_store.mark_verified(item)
    # One backup per retained release at least, so every rollback target has one.
    prune_backups(store, keep=max(2, environment.policy.keep_retired + 1), database=item.database,
                  environment=environment.name)
    return item


def take_verified_backup(dsn: str, environment: Environment, commit: str,
                         store_dir: pathlib.Path | None = None, *, phase: str = "pre-deploy") -> PhaseResult:
    """A fresh verified backup (``db restore`` takes one first); see ``_take``."""
    started = time.monotonic()
    record = migration_state(dsn).record(intended_files=(), intended_commands=())
    item = _take(dsn, environment, commit, pathlib.Path(store_dir) if store_dir else backup_dir(),
                 phase=phase, migrations=record)
    return PhaseResult(backup=str(item.path), backup_sha256=item.sha256,
                       backup_seconds=round(time.monotonic() - started, 3))


def merge_files(files: list[MigrationFile]) -> tuple[MigrationFile, ...]:
    """One global order across services sharing the database; a number used twice
    with different content is an error (two teams picked the same number)."""
    by_version: dict[int, MigrationFile] = {}
    problems = []
    for item in files:
        seen = by_version.setdefault(item.version, item)
        if seen.sha256 != item.sha256 or seen.name != item.name:
            problems.append(f"{item.name}:1: migration number {item.version:04d} is also {seen.name} "
                            "with other content in another service's image: renumber one")
    if problems:
        raise MigrationError(problems)
    return tuple(by_version[v] for v in sorted(by_version))


# ------------------------------------------------------------ older than a contract


def refuse_older_release(dsn: str, service: Service, files: tuple[MigrationFile, ...]) -> None:
    """Raise when a contract newer than everything ``files`` knows has run."""
    known = max((f.version for f in files), default=0)
    rows = [(r.version, r.name, r.phase) for r in applied_migrations(dsn).values()]
    why = contracts.newer_contracts(service.name, str(service.image), known, rows)
    if why:
        raise ContractRollbackRefused(why)


def refuse_older_command_release(dsn: str, service: Service, facts: ImageFacts) -> None:
    """Raise when ``facts``' image is older than one whose migration command
    ran a contract for this service (``core.contracts.older_than_contract``)."""
    why = contracts.older_than_contract(service.name, facts, command_log.command_runs(dsn, service.name))
    if why:
        raise ContractRollbackRefused(why)


__all__ = [
    "BACKUP_DIR_ENV",
    "DEFAULT_BACKUP_DIR",
    "DatabaseSteps",
    "PhaseResult",
    "backup_dir",
    "database_connection",
    "database_dsn",
    "refuse_older_command_release",
    "refuse_older_release",
    "take_verified_backup",
]
