"""The database phase of a deploy: backup, verify, check, expand.

It runs as the executor's ``before_deploy`` hook, after pre-flight (every new
image is pulled on its hosts) and before the first container changes, so a
refusal or failure here leaves every host, and the schema, as they were::

    run_plan(env, hosts, plan, before_deploy=DatabasePhase(env, hosts, commit))

The order, and why:

1. read the migration files from the NEW image (a created, never started
   container on the first target host): the code that needs the schema
   carries it, so what is checked is exactly what ships;
2. refuse a release older than a contract migration that already ran
   (``contract.refuse_older_release``): its code may use what was dropped;
3. the static check of the pending expand files (pure and cheap, so a
   refused file costs no backup);
4. the backup, named for the commit, and its verification (a full restore to
   nowhere): no verified backup, no migration and no deploy;
5. the dynamic check on a schema-only scratch copy;
6. apply the expand files under the advisory lock (``db.apply_expand``).

Services whose migrations are a ``command`` get steps 4 and then the
command, run in a one-off container of the new image with
``RECONCILER_MIGRATION_PHASE=expand``; the tool checks its own files.

Errors (all raised before any container changes): ``BackupFailed``,
``MigrationRefused``/``MigrationError``, ``MigrationFailed``,
``DatabaseError``, ``contract.ContractRollbackRefused`` (stalled), and
``LockHeld`` (waiting).
"""

from __future__ import annotations

import contextlib

import io
import os
import pathlib
import tarfile
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping

import docker.errors

from reconciler.adapters.db import (
    BackupFailed,
    DatabaseError,
    MigrationFailed,
    apply_expand,
    backup,
    check_expand_on_scratch,
    pending,
    prune_backups,
    verify,
)
from reconciler.adapters.db.connection import with_database
from reconciler.errors import StalledError
from reconciler.core.migrations import MigrationError, MigrationFile, check_expand, parse_files
from reconciler.core.model import Database, Environment, ImageRef, Service
from reconciler.core.plan import Plan, Start

BACKUP_DIR_ENV = "RECONCILER_BACKUP_DIR"
DEFAULT_BACKUP_DIR = "/var/lib/reconciler/backups"
PHASE_ENV = "RECONCILER_MIGRATION_PHASE"
LABEL_ROLE = "io.reconciler.migrations"  # marks our one-off containers for a human reading `docker ps -a`
MAX_MIGRATIONS_BYTES = 16 << 20  # a migrations directory is text; more is a wrong path

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

    def record(self) -> dict:
        return {k: v for k, v in {
            "backup": self.backup, "backup_sha256": self.backup_sha256,
            "backup_seconds": self.backup_seconds, "migrations": list(self.applied),
            "lock_wait_ms": self.lock_wait_ms, "skipped": self.skipped,
        }.items() if v not in (None, [], 0, 0.0)}

    def summary(self) -> str:
        if self.skipped:
            return f"database: {self.skipped}"
        parts = [f"backup {pathlib.Path(self.backup).name} verified" if self.backup else "no backup"]
        parts.append("applied " + ", ".join(self.applied) if self.applied else "no migration pending")
        return "database: " + "; ".join(parts)


class DatabasePhase:
    """The ``before_deploy`` callable; ``result`` holds what it did once called."""

    def __init__(self, environment: Environment, hosts: Mapping[str, Any], commit: str, *,
                 store_dir: pathlib.Path | None = None, report: Reporter = _quiet) -> None:
        self.environment, self.hosts, self.commit = environment, hosts, commit
        self.store_dir = store_dir
        self.report = report
        self.result: PhaseResult | None = None

    def __call__(self, plan: Plan) -> None:
        self.result = run_phase(self.environment, plan, self.hosts, self.commit,
                                store_dir=self.store_dir, report=self.report)


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
    from reconciler.adapters.db.tunnel import tunnel_for

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


def deployed_services(environment: Environment, plan: Plan) -> tuple[Service, ...]:
    """Services this plan starts new containers of that declare migrations."""
    starting = {a.service for a in plan.actions if isinstance(a, Start)}
    return tuple(s for s in environment.services if s.name in starting and s.migrations is not None)


def first_target(plan: Plan, service: Service) -> str:
    hosts = {a.host for a in plan.actions if isinstance(a, Start) and a.service == service.name}
    # In the service's own host order: the same host every run, for readable logs.
    return next(h for h in service.hosts if h in hosts)


def run_phase(environment: Environment, plan: Plan, hosts: Mapping[str, Any], commit: str, *,
              store_dir: pathlib.Path | None = None, report: Reporter = _quiet) -> PhaseResult:
    database = environment.database
    services = deployed_services(environment, plan)
    if database is None:
        if services:
            raise StalledError(f"service {services[0].name} declares migrations but environment "
                               f"{environment.name} declares no database: add a database block")
        return PhaseResult(skipped="no database declared")
    if not services and database.backup != "always":
        return PhaseResult(skipped="no migrations in this deploy (backup: when-migrating)")
    with database_connection(database, hosts) as dsn:
        return _run_phase(environment, services, database, dsn, plan, hosts, commit, store_dir, report)


def _run_phase(environment, services, database, dsn, plan, hosts, commit, store_dir, report) -> PhaseResult:
    from reconciler.engine import contract  # imported here: contract imports this module

    files: list[MigrationFile] = []
    commands: list[tuple[Service, str]] = []
    for service in services:
        host = first_target(plan, service)
        if service.migrations.path:
            shipped = read_image_migrations(hosts[host], service.image, service.migrations.path)
            contract.refuse_older_release(dsn, service, shipped)
            files.extend(shipped)
        if service.migrations.command:
            commands.append((service, host))
    files_t = merge_files(files)
    todo = pending(dsn, files_t, "expand")  # raises if an applied file changed
    check_expand(todo)
    report("done", step="db-check", reason=f"{len(todo)} expand file(s) pending, static check passed")

    result = PhaseResult()
    if database.backup == "always" or todo or commands:
        result = take_verified_backup(dsn, environment, commit, store_dir)
        report("done", step="db-backup", reason=f"{result.backup} verified in {result.backup_seconds:.1f}s")
    if todo:
        check_expand_on_scratch(dsn, files_t)
        report("done", step="db-check", reason="dynamic check on a scratch copy passed")
        applied = apply_expand(dsn, files_t)
        result = _with(result, applied=tuple(m.name for m in applied),
                       lock_wait_ms=sum(m.lock_wait_ms for m in applied))
    for service, host in commands:
        run_migration_command(hosts[host], service, "expand")
        result = _with(result, applied=result.applied + (f"command:{service.name}",))
    if result.applied:
        report("done", step="db-migrate", reason="applied " + ", ".join(result.applied))
    return result


def take_verified_backup(dsn: str, environment: Environment, commit: str,
                         store_dir: pathlib.Path | None = None) -> PhaseResult:
    """Backup, verify, prune; raise BackupFailed when there is no verified backup."""
    store = pathlib.Path(store_dir) if store_dir else backup_dir()
    started = time.monotonic()
    item = backup(dsn, store, commit=commit, environment=environment.name)
    try:
        verify(item)
    except BackupFailed:
        # An unverifiable dump must never be offered for a restore later.
        item.sidecar.unlink(missing_ok=True)
        raise
    # One backup per retained release at least, so every rollback target has one.
    prune_backups(store, keep=max(2, environment.policy.keep_retired + 1))
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


# ------------------------------------------------------------------ the image


def read_image_migrations(driver: Any, image: ImageRef, path: str) -> tuple[MigrationFile, ...]:
    """The migration files at ``path`` inside ``image``, read from a created,
    never started container on ``driver``'s host (removed again)."""
    api = driver.engine.api
    where = f"{driver.name}: migrations.path {path} in {image}"
    try:
        created = api.create_container(image.pull_ref, command=["true"], labels={LABEL_ROLE: "read"})
    except docker.errors.APIError as exc:
        raise DatabaseError(f"{where}: cannot create a container to read it: {exc.explanation or exc}") from None
    try:
        try:
            stream, _ = api.get_archive(created["Id"], path)
        except docker.errors.NotFound:
            raise MigrationError([f"{where}: no such directory in the image; fix migrations.path "
                                  "or ship the files there"]) from None
        data = bytearray()
        for chunk in stream:
            data += chunk
            if len(data) > MAX_MIGRATIONS_BYTES:
                raise MigrationError([f"{where}: more than {MAX_MIGRATIONS_BYTES >> 20} MiB; "
                                      "is migrations.path the migrations directory?"])
    finally:
        try:
            api.remove_container(created["Id"], force=True)
        except docker.errors.APIError:
            pass  # a leftover stopped container is harmless; the deploy matters more
    return parse_files(_files_in_tar(bytes(data)))


def _files_in_tar(data: bytes) -> list[tuple[str, str]]:
    """(name, text) of the regular files directly inside the archived directory."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            parts = member.name.strip("/").split("/")
            if member.isfile() and len(parts) == 2:
                handle = tar.extractfile(member)
                out.append((parts[1], handle.read().decode("utf-8") if handle else ""))
    return out


def run_migration_command(driver: Any, service: Service, phase: str, timeout: float = 1800.0) -> str:
    """Run ``migrations.command`` in a one-off container of the service's image,
    told the phase by environment; return its log tail, raise unless it exits 0."""
    api = driver.engine.api
    env = dict(service.env)
    for secret in service.secrets:
        if secret.file:
            env[secret.env] = driver.read_secret_file(secret.file)
    env[PHASE_ENV] = phase
    host_config = api.create_host_config(network_mode=service.networks[0] if service.networks else None)
    argv = list(service.migrations.command)
    where = f"{driver.name}: {service.name} migration command {' '.join(argv)} ({phase})"
    try:
        created = api.create_container(service.image.pull_ref, command=argv, environment=env,
                                       labels={LABEL_ROLE: phase}, host_config=host_config)
    except docker.errors.APIError as exc:
        raise MigrationFailed(f"{where}: cannot create its container: {exc.explanation or exc}") from None
    try:
        api.start(created["Id"])
        try:
            code = api.wait(created["Id"], timeout=timeout).get("StatusCode")
        except Exception as exc:  # requests' ReadTimeout, a lost connection
            raise MigrationFailed(f"{where}: no exit within {timeout:.0f}s ({exc}); it may be "
                                  "half-applied: check the database before the next deploy") from None
        logs = api.logs(created["Id"], tail=30).decode("utf-8", "replace").strip()
        if code != 0:
            raise MigrationFailed(f"{where}: exit {code}; nothing was deployed. Its output:\n{logs}")
        return logs
    except docker.errors.APIError as exc:
        raise MigrationFailed(f"{where}: {exc.explanation or exc}") from None
    finally:
        try:
            api.remove_container(created["Id"], force=True)
        except docker.errors.APIError:
            pass


def _with(result: PhaseResult, **changes: Any) -> PhaseResult:
    return replace(result, **changes)


__all__ = [
    "BACKUP_DIR_ENV",
    "DEFAULT_BACKUP_DIR",
    "DatabasePhase",
    "PhaseResult",
    "backup_dir",
    "database_dsn",
    "deployed_services",
    "read_image_migrations",
    "run_migration_command",
    "run_phase",
    "take_verified_backup",
]
