"""Contract migrations: run late, on purpose, and never rolled back past.

A contract file (``NNNN_slug.contract.sql``) removes what the previous
release still used, so it waits until the release that no longer uses it has
been healthy in the environment for ``migrations.soak`` seconds AND the
desired state says ``migrations.allow_contract: true`` ("only drop the old
columns after everything is working correctly in production").  It runs in a
later reconcile, one that finds the environment in sync, never in the deploy.

Once a contract has run, a release older than it (an image whose migration
files stop below the contract's number) may read what was dropped: the
database phase refuses to deploy it (``refuse_older_release``), reading the
fact from the tracking table, so the refusal survives the agent's state.

Errors: ``ContractRollbackRefused`` (stalled); the database adapter's
``BackupFailed``, ``MigrationFailed``, ``DatabaseError`` (stalled) and
``LockHeld`` (waiting).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any, Mapping

from reconciler.core import model
from reconciler.adapters.db import applied_migrations, pending
from reconciler.adapters.db.migrate import apply_contract
from reconciler.engine.dbphase import _quiet, database_connection, read_image_migrations, run_migration_command, take_verified_backup
from reconciler.errors import StalledError
from reconciler.core.migrations import MigrationFile
from reconciler.core.model import Environment, Service


class ContractRollbackRefused(StalledError):
    """The release is older than a contract migration that already ran."""


@dataclass(frozen=True)
class ContractResult:
    """What one service's contract step decided; ``state`` is one of
    ran, waiting (soak not over: retry after ``wait_seconds``), not-allowed,
    nothing-pending, unhealthy, no-database."""

    service: str
    state: str
    reason: str = ""
    applied: tuple[str, ...] = ()
    wait_seconds: float | None = None
    backup: str | None = None


def refuse_older_release(dsn: str, service: Service, files: tuple[MigrationFile, ...]) -> None:
    """Raise when a contract newer than everything ``files`` knows has run."""
    known = max((f.version for f in files), default=0)
    newer = [row for row in applied_migrations(dsn).values() if row.phase == "contract" and row.version > known]
    if not newer:
        return
    names = ", ".join(row.name for row in newer)
    raise ContractRollbackRefused(
        f"{service.name}: the image {service.image} ships migrations up to {known:04d}, but the contract "
        f"migration(s) {names} already ran on this database: this release is older than that contract and "
        "may use what it removed, so it is not deployed. Deploy a release that ships those files (revert "
        "the revert), or, to go back for real, restore a backup taken before the contract: "
        "`reconciler db backups --env ENV`, then `reconciler db restore BACKUP --env ENV`")


def run_contracts(environment: Environment, hosts: Mapping[str, Any], commit: str, *,
                  healthy_since: float, now: float, store_dir: pathlib.Path | None = None,
                  report=_quiet) -> tuple[ContractResult, ...]:
    """Run the pending contract migrations of every service whose turn it is.

    ``healthy_since`` is when the running release finished deploying healthy
    in this environment (the ``finished`` time of the commit's note); the
    caller calls this only when the environment is in sync.
    """
    if environment.database is None:
        return tuple(ContractResult(s.name, "no-database") for s in environment.services if s.migrations)
    results = []
    for service in environment.services:
        if service.migrations is None:
            continue
        results.append(_one(environment, hosts, commit, service, healthy_since, now, store_dir, report))
    return tuple(results)


def _one(environment: Environment, hosts: Mapping[str, Any], commit: str, service: Service,
         healthy_since: float, now: float, store_dir, report) -> ContractResult:
    migrations = service.migrations
    if not migrations.allow_contract:
        return ContractResult(service.name, "not-allowed", "migrations.allow_contract is false")
    unhealthy = _not_running(environment, hosts, service)
    if unhealthy:
        return ContractResult(service.name, "unhealthy", f"not running: {', '.join(unhealthy)}")
    with database_connection(environment.database, hosts) as dsn:
        return _contract(environment, hosts, commit, service, dsn, healthy_since, now, store_dir, report)


def _contract(environment, hosts, commit, service, dsn, healthy_since, now, store_dir, report) -> ContractResult:
    migrations = service.migrations
    driver = hosts[service.hosts[0]]
    todo: tuple[MigrationFile, ...] = ()
    if migrations.path:
        todo = pending(dsn, read_image_migrations(driver, service.image, migrations.path), "contract")
        if not todo and not migrations.command:
            return ContractResult(service.name, "nothing-pending")
    soaked = now - healthy_since
    if soaked < migrations.soak:
        wait = round(migrations.soak - soaked, 3)
        return ContractResult(service.name, "waiting", f"healthy for {soaked:.0f}s of the {migrations.soak:.0f}s soak",
                              wait_seconds=wait)
    backup = take_verified_backup(dsn, environment, commit, store_dir)
    report("done", step="db-backup", service=service.name, reason=f"{backup.backup} verified before contract")
    applied = tuple(m.name for m in apply_contract(dsn, todo)) if todo else ()
    if migrations.command:
        run_migration_command(driver, service, "contract")
        applied += (f"command:{service.name}",)
    report("done", step="db-contract", service=service.name, reason="applied " + ", ".join(applied))
    return ContractResult(service.name, "ran", applied=applied, backup=backup.backup)


def _not_running(environment: Environment, hosts: Mapping[str, Any], service: Service) -> list[str]:
    bad = []
    for host in service.hosts:
        active = [c for c in hosts[host].observe().managed(environment.name)
                  if c.service == service.name and c.role == model.ROLE_ACTIVE]
        if not active or not active[0].running or active[0].image != str(service.image):
            bad.append(f"{host}/{service.name}")
    return bad


def refuse_rollback_past_contracts(environment: Environment, hosts: Mapping[str, Any], plan, observed) -> None:
    """The rollback lever's guard: restoring a retained container whose image
    is older than a contract that already ran is refused, as a deploy of it
    would be (``refuse_older_release``), before any host changes."""
    from dataclasses import replace

    from reconciler.core.model import ImageRef
    from reconciler.core.plan import Restore

    if environment.database is None:
        return
    targets: dict[tuple[str, str], tuple[Service, str]] = {}
    for action in plan.actions:
        if not isinstance(action, Restore):
            continue
        service = environment.service(action.service)
        if not (service.migrations and service.migrations.path):
            continue
        container = next(c for c in observed[action.host].containers if c.name == action.container)
        targets.setdefault((service.name, container.image or ""), (service, action.host))
    if not targets:
        return
    with database_connection(environment.database, hosts) as dsn:
        for (_, image_text), (service, host) in targets.items():
            image = ImageRef.parse(image_text)
            shipped = read_image_migrations(hosts[host], image, service.migrations.path)
            refuse_older_release(dsn, replace(service, image=image), shipped)
