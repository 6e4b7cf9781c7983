"""Contract migrations: run late, on purpose, and never rolled back past.

A contract (``NNNN_slug.contract.sql``, or a service's ``migrations.command``
told ``RECONCILER_MIGRATION_PHASE=contract``) removes what the previous
release still used, so it waits until the release that no longer uses it has
been healthy in the environment for ``migrations.soak`` seconds AND the
desired state says ``migrations.allow_contract: true``.  It is an engine
run of its own (``engine.contracts_run``: a reconcile that finds the release
in sync), never part of a deploy:

    view = observe_contracts(environment, hosts, healthy_since, now)   # I/O
    plan = core.contracts.plan_contract(environment, view, commit)     # pure
    ... the engine executes plan's steps (dbphase.DatabaseSteps), journaled, recorded ...
    core.contracts.next_contract_in(environment, view)                 # when to look again

Once a contract has run, a release older than it may use what was dropped:
a deploy of it (``dbphase.DatabaseSteps``' CheckMigrations) and the rollback
lever (``refuse_rollback_past_contracts``) refuse it before any host changes,
for files and for migration commands alike, reading the facts from the
database, so the refusal survives the agent's state (and a restore of a
pre-contract backup lifts it, as it should).

Errors: ``ContractRollbackRefused`` (stalled); the database adapter's
``BackupFailed``, ``MigrationFailed``, ``DatabaseError`` (stalled) and
``LockHeld`` (waiting); ``HostUnreachable``/``EngineError`` (transient).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from reconciler.adapters.db import pending
from reconciler.adapters.db.commands import command_runs
from reconciler.adapters.db.images import database_host
from reconciler.core import managed
from reconciler.core.contracts import (
    ContractsView,
    ServiceContract,
    soak_remaining,
)
from reconciler.core.migrations import parse_files
from reconciler.core.model import Environment, ImageRef, Service
from reconciler.core.plan import order_services
from reconciler.core.plan_steps import Restore
from reconciler.engine.dbphase import (
    database_connection,
    refuse_older_command_release,
    refuse_older_release,
)

__all__ = ["observe_contracts", "refuse_older_release", "refuse_rollback_past_contracts"]


def observe_contracts(environment: Environment, hosts: Mapping[str, Any], healthy_since: Mapping[str, float],
                      now: float) -> ContractsView:
    """What each service allowed to contract has pending, and its soak left.

    ``healthy_since`` maps a service to when its running image started
    running healthy (a service missing from it has no known start: its soak
    has not begun).  Services with ``allow_contract`` false are not looked at:
    this runs on every in-sync reconcile, and reading an image costs a
    container create on a host.  Files are read, and a command's image
    inspected, only where every host runs the desired image.
    """
    database = environment.database
    services = [s for s in order_services(environment.services) if s.migrations and s.migrations.allow_contract]
    if database is None or not services:
        return ContractsView(environment.name)
    observed: dict[str, Any] = {}
    seen = []
    with database_connection(database, hosts) as dsn:
        runs = command_runs(dsn)
        for service in services:
            host = service.hosts[0]
            remaining = soak_remaining(service.migrations.soak, healthy_since.get(service.name), now)
            not_running = _not_running(environment, hosts, service, observed)
            if not_running:
                seen.append(ServiceContract(service.name, host, not_running=not_running, soak_remaining=remaining))
                continue
            driver = database_host(hosts[host])
            files: tuple[str, ...] = ()
            if service.migrations.path:
                shipped = parse_files(driver.read_image_files(service.image, service.migrations.path))
                files = tuple(m.name for m in pending(dsn, shipped, "contract"))
            command_due = False
            if service.migrations.command:
                image_id = driver.image_facts(service.image).id
                command_due = not any(r.service == service.name and r.phase == "contract" and r.image_id == image_id
                                      and r.exit_code == 0 for r in runs)
            seen.append(ServiceContract(service.name, host, files, command_due, soak_remaining=remaining))
    return ContractsView(environment.name, tuple(seen))


def _not_running(environment: Environment, hosts: Mapping[str, Any], service: Service,
                 observed: dict[str, Any]) -> tuple[str, ...]:
    bad = []
    for host in service.hosts:
        if host not in observed:
            observed[host] = hosts[host].observe()
        active = [c for c in observed[host].managed(environment.name)
                  if c.service == service.name and c.role == managed.ROLE_ACTIVE]
        if not active or not active[0].running or active[0].image != str(service.image):
            bad.append(f"{host}/{service.name}")
    return tuple(bad)


def refuse_rollback_past_contracts(environment: Environment, hosts: Mapping[str, Any], plan, observed) -> None:
    """The rollback lever's guard: restoring a retained container whose image
    is older than a contract that already ran is refused, as a deploy of it
    would be, before any host changes, for files and commands alike."""
    if environment.database is None:
        return
    targets: dict[tuple[str, str], tuple[Service, str]] = {}
    for action in plan.actions:
        if not isinstance(action, Restore):
            continue
        service = environment.service(action.service)
        if service.migrations is None:
            continue
        container = next(c for c in observed[action.host].containers if c.name == action.container)
        targets.setdefault((service.name, container.image or ""), (service, action.host))
    if not targets:
        return
    with database_connection(environment.database, hosts) as dsn:
        for (_, image_text), (service, host) in targets.items():
            older = replace(service, image=ImageRef.parse(image_text))
            driver = database_host(hosts[host])
            if service.migrations.path:
                refuse_older_release(dsn, older, parse_files(driver.read_image_files(older.image, service.migrations.path)))
            if service.migrations.command:
                refuse_older_command_release(dsn, older, driver.image_facts(older.image))
