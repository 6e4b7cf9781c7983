"""Contract migrations: when they are due, and what they forbid afterwards.  Pure.

A contract removes what the previous release still used, so it runs late, on
purpose: only when ``migrations.allow_contract`` is true, every host runs the
desired image, and that image has been healthy for ``migrations.soak``
seconds.  ``plan_contract`` turns an observation of that (``ContractsView``,
made by ``reconciler.engine.contract.observe_contracts``) into plan steps::

    CheckMigrations(phase="contract")   per due service: read what its image ships
    Backup(required=True)               one verified backup before anything is dropped
    Migrate(phase="contract")           per due service

and ``next_contract_in`` says when the next soak ends, so a caller can queue
the contract for that moment instead of the next drift check.

Once a contract has run, a release older than it may use what it removed.
For ``migrations.path`` the files say it (``newer_contracts``: the image's
files stop below the contract's number).  A ``migrations.command`` tool keeps
its own books, so reconciler records every command it runs, with the image's
id and creation time, and ``older_than_contract`` orders a candidate image
against the images that ran a contract: the refusal names service, image,
contract and the way out.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterable

from reconciler.core.model import Environment
from reconciler.core.plan import Finding, Plan, order_services
from reconciler.core.plan_steps import Backup, CheckMigrations, Migrate

RESTORE_HINT = ("`reconciler db backups --env ENV`, then `reconciler db restore BACKUP --env ENV`")


# ------------------------------------------------------------ images and runs


@dataclass(frozen=True)
class ImageFacts:
    """What the engine says about an image, enough to order two releases."""

    reference: str  # as deployed: repository:tag@digest
    id: str  # the engine's image id: the config's digest, the same on every host
    created: str  # RFC 3339: the org.opencontainers.image.created label, else the config's created
    created_from: str = "config"  # "label" or "config": which of the two it is


@dataclass(frozen=True)
class CommandRun:
    """One run of a service's ``migrations.command``, as recorded in the database."""

    token: str  # random, unique: tells two runs apart even across a restore
    service: str
    phase: str  # expand | contract
    image: str
    image_id: str
    image_created: str
    commit: str
    host: str
    exit_code: int | None  # None: started, no exit seen (it may have done anything)
    started_at: str = ""


def epoch(rfc3339: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds cut), or None."""
    text = (rfc3339 or "").strip()
    if not text:
        return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    date, sep, rest = text.partition("T")
    if sep and "." in rest:
        # Python parses at most microseconds; the engine gives nanoseconds.
        clock, _, frac = rest.partition(".")
        digits = "".join(c for c in frac if c.isdigit())
        zone = frac[len(digits):]
        rest = f"{clock}.{digits[:6]}{zone}"
    try:
        moment = datetime.datetime.fromisoformat(f"{date}{sep}{rest}")
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def older_than_contract(service: str, candidate: ImageFacts, runs: Iterable[CommandRun]) -> str | None:
    """Why ``candidate`` may not run for ``service`` after the contract
    commands in ``runs`` (in the order they ran), or None when it may.

    Every contract command that started counts, whatever its exit: it may have
    removed something before it failed.  The candidate is refused when:

    - it ran a migration command before the image that ran the contract first
      did (it was deployed before that release: it is older);
    - it was created before that image, or at the same moment (a build with a
      fixed creation time: the order cannot be told), or its time is unknown.

    The image that ran the newest contract, and images created after the
    images that ran contracts, pass.
    """
    runs = [r for r in runs if r.service == service]
    contracts = [r for r in runs if r.phase == "contract"]
    first_run = {}
    for index, run in enumerate(runs):
        first_run.setdefault(run.image_id, index)
    mine = first_run.get(candidate.id)
    for contract in reversed(contracts):  # the newest contract first: the message names it
        if contract.image_id == candidate.id:
            return None  # it ran this contract itself: as new as it, and as every earlier one
        why = None
        theirs, ours = epoch(contract.image_created), epoch(candidate.created)
        if mine is not None and mine < first_run[contract.image_id]:
            why = f"it ran its migration command before {contract.image} first did, so it is an earlier release"
        elif ours is None or theirs is None:
            why = (f"its creation time ({candidate.created or 'none'}) or that of {contract.image} "
                   f"({contract.image_created or 'none'}) is unknown, so the two cannot be ordered")
        elif ours < theirs:
            why = f"it was created {candidate.created}, before {contract.image} ({contract.image_created})"
        elif ours == theirs:
            why = (f"it was created at the same moment as {contract.image} ({candidate.created}): a build with a fixed "
                   "creation time, so reconciler cannot tell which is newer")
        if why:
            return (f"{service}: the image {candidate.reference} is older than the contract its migration command ran "
                    f"with {contract.image} (commit {contract.commit[:12]}, on {contract.host}): {why}. It may use what "
                    "that contract removed, so it is not deployed. Deploy that image or a release built after it (a "
                    "build with a fixed creation time can say when it was made in the org.opencontainers.image.created "
                    "label), or, to go back for real, restore a backup taken before the contract: " + RESTORE_HINT)
    return None


def newer_contracts(service: str, image: str, known: int, applied: Iterable[tuple[int, str, str]]) -> str | None:
    """Why an image whose migration files go up to ``known`` may not run after
    the applied ``(version, name, phase)`` rows, or None when it may."""
    newer = sorted((v, n) for v, n, phase in applied if phase == "contract" and v > known)
    if not newer:
        return None
    names = ", ".join(n for _, n in newer)
    return (f"{service}: the image {image} ships migrations up to {known:04d}, but the contract "
            f"migration(s) {names} already ran on this database: this release is older than that contract and "
            "may use what it removed, so it is not deployed. Deploy a release that ships those files (revert "
            "the revert), or, to go back for real, restore a backup taken before the contract: " + RESTORE_HINT)


# ------------------------------------------------------------ the contract plan


@dataclass(frozen=True)
class ServiceContract:
    """One service's contract, as observed."""

    service: str
    host: str  # where its image's files are read and its command runs
    pending: tuple[str, ...] = ()  # contract files its image ships, not yet applied
    command_pending: bool = False  # its command has not run as a contract for the running image
    not_running: tuple[str, ...] = ()  # "host/service" where the desired image does not run
    soak_remaining: float | None = None  # seconds; None: no healthy start of the image is known

    @property
    def due(self) -> bool:
        return bool(self.pending or self.command_pending)


@dataclass(frozen=True)
class ContractsView:
    environment: str
    services: tuple[ServiceContract, ...] = ()

    def service(self, name: str) -> ServiceContract | None:
        return next((s for s in self.services if s.service == name), None)


def _ready(environment: Environment, view: ContractsView) -> tuple[list[ServiceContract], list[Finding]]:
    ready, findings = [], []
    for service in order_services(environment.services):
        seen = view.service(service.name)
        if service.migrations is None or seen is None:
            continue
        if seen.not_running:
            # What is pending is not known: it is read from the running image.
            findings.append(Finding(seen.host, service.name, "contract-waiting",
                                    f"contracts wait until {service.image} runs on {', '.join(seen.not_running)}"))
            continue
        if not seen.due:
            continue
        what = ", ".join(seen.pending + (("its migration command",) if seen.command_pending else ()))
        if not service.migrations.allow_contract:
            detail = f"{what} pending; migrations.allow_contract is false"
        elif environment.database is None:
            detail = f"{what} pending; the environment declares no database"
        elif seen.soak_remaining is None:
            detail = f"{what} pending; waits for the running image to be deployed healthy"
        elif seen.soak_remaining > 0:
            detail = (f"{what} pending; {seen.soak_remaining:.0f}s of the {service.migrations.soak:.0f}s "
                      "soak left")
        else:
            ready.append(seen)
            continue
        findings.append(Finding(seen.host, service.name, "contract-waiting", detail))
    return ready, findings


def plan_contract(environment: Environment, view: ContractsView, revision: str) -> Plan:
    """The contract steps for the services whose turn it is (see the module
    docstring); the others are findings saying what they wait for."""
    ready, findings = _ready(environment, view)
    actions: list = []
    if ready:
        name = (environment.database.name if environment.database else None) or "database"
        actions += [CheckMigrations(s.host, s.service, f"read the contract migrations {environment.service(s.service).image} ships",
                                    phase="contract") for s in ready]
        actions.append(Backup("", "", f"verified backup of {name} before the contract", database=name, required=True))
        for s in ready:
            what = ", ".join(s.pending + (("its migration command",) if s.command_pending else ()))
            actions.append(Migrate(s.host, s.service, f"contract: {what}", phase="contract"))
    return Plan(environment=environment.name, revision=revision, actions=tuple(actions), findings=tuple(findings))


def next_contract_in(environment: Environment, view: ContractsView) -> float | None:
    """Seconds until the next due contract's soak ends (allowed, running, not
    yet soaked), or None when no contract waits only for time."""
    waits = []
    for service in environment.services:
        seen = view.service(service.name)
        if (service.migrations is None or seen is None or not seen.due or not service.migrations.allow_contract
                or environment.database is None or seen.not_running or seen.soak_remaining is None):
            continue
        if seen.soak_remaining > 0:
            waits.append(seen.soak_remaining)
    return min(waits, default=None)


def soak_remaining(soak: float, healthy_since: float | None, now: float) -> float | None:
    if healthy_since is None:
        return None
    return round(max(0.0, soak - (now - healthy_since)), 3)
