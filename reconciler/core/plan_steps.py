"""The steps a plan is made of: typed actions, each with the host, service
and reason it concerns, tested by equality.  Pure.

A step says what will happen, not how: the executor (``engine``) does each
one, the journal records each by its ``step`` name, and ``plan`` shows them
in order.  The container steps come first, then those of a host's router
(``Route``, one ``core.router_steps`` step each), then the database phase's
(``DATABASE_STEPS``), which run before any container of the release starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.model import ImageRef


@dataclass(frozen=True)
class Action:
    host: str
    service: str
    reason: str

    @property
    def step(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Pull(Action):
    image: ImageRef = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Retire(Action):
    """Stop the active container and rename it ``-old-<hash>`` (kept for rollback)."""

    batch: int = 0


@dataclass(frozen=True)
class Start(Action):
    """Create and start the desired container (as ``-next`` when start-first)."""

    batch: int = 0
    beside: bool = False  # start-first: the old one keeps serving meanwhile


@dataclass(frozen=True)
class CheckHealth(Action):
    batch: int = 0
    beside: bool = False


@dataclass(frozen=True)
class Switch(Action):
    """Start-first only: retire the old container, promote ``-next``."""

    batch: int = 0
    # Blue-green with a watch: the retired container keeps running, the
    # router's standby until the watch ends (core.canary).
    keep: bool = False


@dataclass(frozen=True)
class Restore(Action):
    """Put a retained (retired) container back in service: the rollback lever."""

    container: str = ""


@dataclass(frozen=True)
class Resume(CheckHealth):
    """Finish what an interrupted run left half-done on one host: rename the
    candidate in if there is no active container, start it, check health.
    A CheckHealth, so a failure rolls the deploy back."""

    container: str = ""  # id
    rename: bool = False


@dataclass(frozen=True)
class Route(Action):
    """One step of the host's router (``core.router``): a blue-green switch is a series of these.

    ``container``: for AddServer, the container (by name) whose address the
    server gets, read when the step runs (a container has its address only
    once started).  The step's name is the router step's, so a plan and the
    journal show each one.
    """

    route: object = None  # a core.router.RouterStep
    batch: int = 0
    container: str = ""
    # Write the router's config and state file after the step: after a Drain
    # (the switch is then in the files while blue drains) and after the last
    # step of a host's switch (before any container stops), so a restarted
    # router routes as the switch left it.  Not after adding green (a router
    # restarted before the switch only loses green: WaitUp fails, safely) nor
    # after the switch itself: its window stays the one command.
    persist: bool = False

    @property
    def step(self) -> str:
        return self.route.step


@dataclass(frozen=True)
class Adopt(Action):
    """Blue-green: the candidate an interrupted run started (the router knows
    it) becomes this run's new container: started if stopped, then switched
    in or rolled back like one this run started."""

    container: str = ""  # name
    batch: int = 0


@dataclass(frozen=True)
class Aside(Action):
    """Blue-green: rename a candidate the router may still send requests to
    out of the way (running, as a retired copy): the new candidate needs the
    name, and it is drained after the switch."""

    container: str = ""  # name


@dataclass(frozen=True)
class Revive(Restore):
    """Blue-green rollback: start a retained container as the candidate,
    beside the serving one; the router switches to it, then ``Switch``.  A
    Restore, so what guards and records a rollback (contracts, the lever's
    commit) sees it as one."""

    batch: int = 0


@dataclass(frozen=True)
class Heal(Action):
    """Start the desired container that was stopped by hand, then check it."""

    container: str = ""


@dataclass(frozen=True)
class Remove(Action):
    """Stop and remove a container the desired state no longer has."""

    container: str = ""


@dataclass(frozen=True)
class Prune(Action):
    """Remove retired containers (and their images) beyond ``keep_retired``."""

    containers: tuple[str, ...] = ()


# ------------------------------------------------------------ the database phase
# Steps of the plan like the container steps, so that ``plan`` shows them and
# the journal covers them.  They run after pre-flight and before the first
# container change; none is undone by a rollback (expand migrations are
# backward compatible by construction, which CheckMigrations enforces).


@dataclass(frozen=True)
class CheckMigrations(Action):
    """Read the migrations the new image ships (on ``host``), refuse a release
    older than a contract that already ran, and statically check what is
    pending for ``phase``: a refusal here costs no backup."""

    phase: str = "expand"


@dataclass(frozen=True)
class Backup(Action):
    """A verified backup of ``database`` for this commit (reused when this
    commit already has one and no migration ran since); ``host`` is empty."""

    database: str = ""
    required: bool = True  # policy backup: always; False = only if a migration is pending
    # A retry of the same commit may reuse its verified backup while no
    # migration ran since; the fresh backup before a restore never does.
    reuse: bool = True


@dataclass(frozen=True)
class Migrate(Action):
    """Apply ``service``'s pending ``phase`` migrations (files after a dry run
    on a scratch copy, or its migration command in a one-off container on ``host``)."""

    phase: str = "expand"


@dataclass(frozen=True)
class RestoreDatabase(Action):
    """Restore ``backup`` into the environment's database (after a fresh Backup)."""

    backup: str = ""


DATABASE_STEPS = (CheckMigrations, Backup, Migrate, RestoreDatabase)
