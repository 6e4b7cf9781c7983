"""The planner: desired state + observed hosts -> an ordered plan.  Pure.

``plan_deploy`` compares each (host, service) pair and returns typed actions
in the order the executor must run them, each with its reason:

1. ``Pull`` every missing image on every host that needs it (pre-flight: a
   pull failure changes nothing anywhere);
2. per service, dependencies first, per batch of hosts: ``Start`` the new
   container (beside the old one, or after ``Retire`` of the old one when a
   host port forbids two), ``CheckHealth``, ``Switch`` (retire the old one
   and give the new one the service's name);
3. ``Heal`` drift when policy says so; ``Remove`` services no longer desired
   when policy allows pruning;
4. ``Prune`` retired containers beyond the policy's ``keep_retired``.

Actions that share ``(service, batch, step)`` may run on their hosts in
parallel.  Nothing here does I/O; the plan is tested by equality.  The
action types themselves are ``core.plan_steps``'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from reconciler.core import managed
from reconciler.core.model import Environment, Service
from reconciler.core.managed import ObservedContainer, ObservedHost
from reconciler.core.plan_steps import (
    Action,
    Pull,
    Retire,
    Start,
    CheckHealth,
    Switch,
    Restore,
    Heal,
    Remove,
    Prune,
    CheckMigrations,
    Backup,
    Migrate,
    RestoreDatabase,
)


def plan_restore(desired: Environment, revision: str, backup: str) -> Plan:
    """A database restore: a fresh verified backup first (the way back), then the restore."""
    name = (desired.database.name if desired.database else None) or "database"
    return Plan(environment=desired.name, revision=revision, actions=(
        Backup("", "", f"fresh verified backup of {name}: restore it to undo this", database=name, required=True, reuse=False),
        RestoreDatabase("", "", f"restore {backup} into {name}; everything written since it was taken is gone", backup=backup),
    ))


@dataclass(frozen=True)
class Finding:
    """Something the plan reports but does not act on."""

    host: str
    service: str | None
    kind: str  # drift, unmanaged, prune-disabled
    detail: str


@dataclass(frozen=True)
class ServiceChange:
    """What differs for one service on one host, for people to read."""

    host: str
    service: str
    kind: str  # create, update, remove, heal
    fields: tuple[tuple[str, object, object], ...] = ()  # (field, observed, desired)


@dataclass(frozen=True)
class Plan:
    environment: str
    revision: str
    actions: tuple[Action, ...] = ()
    changes: tuple[ServiceChange, ...] = ()
    findings: tuple[Finding, ...] = field(default=())

    @property
    def in_sync(self) -> bool:
        return not self.actions


def order_services(services: tuple[Service, ...]) -> tuple[Service, ...]:
    """Dependencies before dependents; ties by name.  The schema already
    rejects cycles; a cycle here would be a bug, so it raises."""
    by_name = {s.name: s for s in services}
    done: list[Service] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in by_name:
            return
        if name in visiting:
            raise ValueError(f"dependency cycle through {name}")
        visiting.add(name)
        for dep in sorted(by_name[name].depends_on):
            visit(dep)
        visiting.discard(name)
        seen.add(name)
        done.append(by_name[name])

    for name in sorted(by_name):
        visit(name)
    return tuple(done)


def batches(hosts: tuple[str, ...], size: int) -> tuple[tuple[str, ...], ...]:
    size = max(1, size)
    return tuple(hosts[i : i + size] for i in range(0, len(hosts), size))


def diff_spec(observed: dict, desired: dict, *, old_env: Mapping[str, str] | None = None,
              new_env: Mapping[str, str] | None = None) -> tuple[tuple[str, object, object], ...]:
    """Field-level differences between two ``spec_summary`` dicts.

    Env and secrets are compared per key (by their hashes), so the plan names
    the key that changed.  An env value is shown in clear when ``old_env`` /
    ``new_env`` (``shown_env``: the values that do not look secret) hold it,
    else as ``(set)``; secrets are never shown.
    """
    out: list[tuple[str, object, object]] = []
    for key in sorted(set(observed) | set(desired)):
        new = desired.get(key)
        # A new container: compare maps key by key against an empty map, and
        # leave out fields that are empty anyway.
        old = observed.get(key, {} if isinstance(new, dict) else None)
        if old == new or (old is None and new in (None, [], {})):
            continue
        if isinstance(old, dict) and isinstance(new, dict) and key in ("env", "secrets", "labels", "resources"):
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) != new.get(sub):
                    if key == "env":
                        shown = (_shown(old.get(sub), (old_env or {}).get(sub)), _shown(new.get(sub), (new_env or {}).get(sub)))
                    else:
                        shown = (_mask(old.get(sub), key == "secrets"), _mask(new.get(sub), key == "secrets"))
                    out.append((f"{key}.{sub}", *shown))
        else:
            out.append((key, old, new))
    return tuple(out)


def _shown(hashed: object, clear: str | None) -> object:
    """An env value for the plan: in clear when it may be shown, else masked."""
    if hashed is None:
        return None
    return clear if clear is not None else "(set)"


def _mask(value: object, masked: bool) -> object:
    if value is None or not masked:
        return value
    return "(set)"


def _index(observed: Mapping[str, ObservedHost], env: str) -> dict[tuple[str, str], list[ObservedContainer]]:
    """(host, service) -> the environment's containers of that service there.

    Built once per plan: looking them up per pair would scan every container
    of the host for every service (the drift check of a large fleet)."""
    index: dict[tuple[str, str], list[ObservedContainer]] = {}
    for name, host in observed.items():
        for c in host.managed(env):
            index.setdefault((name, c.service or ""), []).append(c)
    return index


def _retired_in_order(containers: list[ObservedContainer]) -> list[ObservedContainer]:
    """Retired containers, newest first: by the time they stopped when the
    observation has it, else by when they were created (the engine's
    container list, which observing uses to stay one call per host, gives
    only that; creation order is release order)."""
    retired = [c for c in containers if c.role == managed.ROLE_RETIRED]
    return sorted(retired, key=lambda c: (c.finished_at, c.created, c.name), reverse=True)


def plan_deploy(
    desired: Environment,
    observed: Mapping[str, ObservedHost],
    revision: str,
) -> Plan:
    """The ordered actions that make ``observed`` match ``desired``."""
    from reconciler.core import bluegreen, canary, router_image, traffic  # they build this module's actions

    env = desired.name
    policy = desired.policy
    pulls: list[Action] = []
    deploys: list[Action] = []
    tail: list[Action] = []
    changes: list[ServiceChange] = []
    findings: list[Finding] = []
    pulled: set[tuple[str, str]] = set()
    by_pair = _index(observed, env)

    for service in order_services(desired.services):
        want_hash = managed.config_hash(service)
        want_spec = managed.spec_summary(service)
        want_env = managed.shown_env(service)
        to_deploy: list[str] = []
        for host in service.hosts:
            seen = by_pair.get((host, service.name), [])
            active = next((c for c in seen if c.role == managed.ROLE_ACTIVE), None)
            leftover = next((c for c in seen if c.role == managed.ROLE_CANDIDATE), None)
            if leftover is not None and service.expose is None:
                # A -next container is only ever a deploy in progress; one
                # found at planning time was left by an interrupted run.
                tail_reason = "remove the candidate an interrupted deploy left behind"
                deploys.append(Remove(host, service.name, tail_reason, container=leftover.name))
            if active is None:
                to_deploy.append(host)
                changes.append(ServiceChange(host, service.name, "create", diff_spec({}, want_spec, new_env=want_env)))
            elif active.config_hash != want_hash:
                to_deploy.append(host)
                changes.append(ServiceChange(host, service.name, "update",
                                             diff_spec(active.spec, want_spec, old_env=active.shown_env, new_env=want_env)))
            elif not active.running or active.state == "restarting":
                detail = f"{active.name} is {active.state}, desired running"
                if policy.drift == "heal":
                    changes.append(ServiceChange(host, service.name, "heal", (("state", active.state, "running"),)))
                    tail.append(Heal(host, service.name, f"drift: {detail}", container=active.name))
                else:
                    findings.append(Finding(host, service.name, "drift", detail + " (policy drift: report)"))
            retired = _retired_in_order(seen)
            keep = policy.keep_retired
            if host in to_deploy and active is not None:
                # The deploy retires the active container into this name,
                # replacing any older container that has it (same config):
                # that one is gone either way, and pruning the name after the
                # switch would delete the rollback target just made.
                retiring = managed.retired_name(env, active)
                retired = [c for c in retired if c.name != retiring]
                keep -= 1  # keep room for the container this deploy retires
            excess = tuple(c.name for c in retired[max(keep, 0):])
            if excess:
                tail.append(Prune(host, service.name, f"keep the newest {policy.keep_retired} retired", containers=excess))
        for host in to_deploy:
            key = (host, service.image.pull_ref)
            if key in pulled:
                continue
            pulled.add(key)
            obs = observed.get(host)
            if obs is None or obs.images is None:
                pulls.append(Pull(host, service.name, f"make sure {service.image} is on {host}", image=service.image))
            elif service.image.pull_ref not in obs.images:
                pulls.append(Pull(host, service.name, f"{service.image} is not on {host}", image=service.image))
        if service.expose is not None:
            # Blue-green through each host's router (core.bluegreen): the
            # interrupted run's work is read from the router, like containers.
            deploys += bluegreen.settle(desired, service, by_pair, observed, to_deploy)
            if service.strategy == "canary" and to_deploy:  # every host at once, step by step (core.canary)
                deploys += canary.deploy(desired, service, tuple(to_deploy), by_pair, observed)
            else:
                for index, batch in enumerate(batches(tuple(to_deploy), service.rollout.batch_size)):
                    deploys += bluegreen.deploy_batch(desired, service, batch, index, by_pair, observed)
            # rollout.watch after the last switch, blue the router's standby meanwhile
            deploys += canary.watches(service, to_deploy, standby=canary.standbys(desired, service, to_deploy, by_pair))
            continue
        for index, batch in enumerate(batches(tuple(to_deploy), service.rollout.batch_size)):
            beside = service.strategy == "start-first"
            for host in batch:
                has_active = any(c.role == managed.ROLE_ACTIVE for c in by_pair.get((host, service.name), []))
                if not beside and has_active:
                    deploys.append(Retire(host, service.name, "free the host port for the new version", batch=index))
            for host in batch:
                deploys.append(Start(host, service.name, f"run {service.image}", batch=index, beside=beside))
            for host in batch:
                deploys.append(CheckHealth(host, service.name, f"{service.health.kind} check", batch=index, beside=beside))
            if beside:
                for host in batch:
                    deploys.append(Switch(host, service.name, "healthy: retire the old version", batch=index))

    wanted = {(h, s.name) for s in desired.services for h in s.hosts}
    for host_name in sorted(observed):
        host = observed[host_name]
        for container in host.unmanaged():
            findings.append(Finding(host_name, None, "unmanaged", f"{container.name} has no reconciler labels; left alone"))
        for container in host.managed(env):
            if (host_name, container.service) in wanted:
                continue
            if policy.prune:
                # Its retired copies go too: nothing can roll back to a
                # service that is no longer desired, and they hold images.
                if container.role == managed.ROLE_ACTIVE:
                    changes.append(ServiceChange(host_name, container.service, "remove"))
                    reason = "no longer in the desired state"
                else:
                    reason = "kept copy of a service no longer desired"
                tail.append(Remove(host_name, container.service, reason, container=container.name))
            elif container.role == managed.ROLE_ACTIVE:
                findings.append(
                    Finding(host_name, container.service, "prune-disabled", f"{container.name} is no longer desired; policy prune is off")
                )

    # A router run from an image is started (or replaced) before any routing on its host.
    router_steps = router_image.steps(desired, observed)
    pulls += [a for a in router_steps if isinstance(a, Pull)]
    tail += [a for a in router_steps if isinstance(a, router_image.RemoveRouter)]
    deploys = ([a for a in router_steps if isinstance(a, router_image.StartRouter)]
               + bluegreen.configures(desired, observed) + traffic.settle(desired, observed) + deploys)
    return Plan(
        environment=env,
        revision=revision,
        actions=tuple(pulls + traffic.around_database(desired, observed, database_steps(desired, deploys, "expand"))
                      + deploys + tail),
        changes=tuple(changes),
        findings=tuple(findings),
    )


def database_steps(desired: Environment, deploys: list[Action], phase: str) -> list[Action]:
    """The database phase for the services ``deploys`` starts: check, back up,
    migrate.  With a database and no migrating service, a backup still comes
    first when ``database.backup`` is ``always``."""
    database = desired.database
    starting = {a.service for a in deploys if isinstance(a, Start)}
    migrating = [s for s in order_services(desired.services) if s.name in starting and s.migrations is not None]
    # The files are read, and a migration command run, on the service's first
    # host that this deploy starts it on: the same host every run, for readable logs.
    first = {s.name: next(h for h in s.hosts if any(isinstance(a, Start) and a.service == s.name and a.host == h for a in deploys))
             for s in migrating}
    if database is None:
        # Migrations with nowhere to run them: the check step refuses the
        # deploy before any container changes (the database steps say why).
        return [CheckMigrations(first[s.name], s.name, f"check the {phase} migrations {s.image} ships", phase=phase)
                for s in migrating]
    if not migrating and not (starting and database.backup == "always"):
        return []
    name = database.name or "database"
    steps: list[Action] = [
        CheckMigrations(first[s.name], s.name, f"check the {phase} migrations {s.image} ships", phase=phase) for s in migrating
    ]
    steps.append(Backup("", "", f"verified backup of {name} for this commit", database=name,
                        required=database.backup == "always"))
    steps += [Migrate(first[s.name], s.name, f"apply {s.name}'s pending {phase} migrations", phase=phase) for s in migrating]
    return steps


def plan_rollback(desired: Environment, observed: Mapping[str, ObservedHost], to_revision: str | None = None) -> Plan:
    """Restore a retained previous version of every service on every host.

    Without ``to_revision``: on each host, the newest retired container that
    differs from the active one.  With it: the retired container deployed
    from that commit (a prefix of the id is enough).  A host that has no
    such container is a finding, and the caller refuses the whole rollback:
    half a fleet rolled back is worse than none.
    """
    from reconciler.core import bluegreen

    env = desired.name
    actions: list[Action] = []
    changes: list[ServiceChange] = []
    findings: list[Finding] = []
    by_pair = _index(observed, env)
    for service in order_services(desired.services):
        switched: dict[str, str] = {}  # blue-green: host -> the retained container to switch back to
        for host in service.hosts:
            seen = by_pair.get((host, service.name), [])
            active = next((c for c in seen if c.role == managed.ROLE_ACTIVE), None)
            candidates = [
                c
                for c in _retired_in_order(seen)
                if (to_revision is None and (active is None or c.config_hash != active.config_hash))
                or (to_revision is not None and (c.revision or "").startswith(to_revision))
            ]
            if not candidates:
                wanted = f"from revision {to_revision}" if to_revision else "older than the running one"
                findings.append(Finding(host, service.name, "no-rollback-target", f"no retained container {wanted}"))
                continue
            target = candidates[0]
            if active is not None and active.config_hash == target.config_hash:
                continue  # already runs that version
            changes.append(ServiceChange(host, service.name, "update", diff_spec(
                active.spec if active else {}, target.spec, old_env=active.shown_env if active else None,
                new_env=target.shown_env)))
            if service.expose is not None:
                switched[host] = target.name
                continue
            actions.append(Restore(host, service.name, f"roll back to {target.image} (rev {str(target.revision)[:12]})", container=target.name))
        if switched:
            actions += bluegreen.rollback_hosts(desired, service, switched, by_pair, observed)
    return Plan(environment=env, revision=to_revision or "previous", actions=tuple(actions), changes=tuple(changes), findings=tuple(findings))
