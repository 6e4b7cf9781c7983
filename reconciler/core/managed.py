"""The containers reconciler manages: what each carries and how it is named,
and what is observed of them and their hosts.  Pure.

A container's labels (``LABEL_*``) say which environment and service it
belongs to and the shape it was created with (``spec_summary``, hashed by
``config_hash``); its name says its role (``container_name``).  The
engine's answer about a host becomes an ``ObservedHost`` of
``ObservedContainer``s, which the planner compares with the desired state
(``core.model``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.core.model import HealthCheck, SecretRef, Service

if TYPE_CHECKING:  # a router's observed state lives with the router's model (core.router imports this module)
    from reconciler.core.router import RouterView

# Labels reconciler sets on every container it owns.  A container without
# LABEL_ENVIRONMENT is unmanaged and is never touched.
LABEL_PREFIX = "io.reconciler."
# An environment's router container (core.router_image): the environment that
# owns it; never LABEL_ENVIRONMENT, so service reconciliation never sees it.
LABEL_ROUTER = LABEL_PREFIX + "router"
LABEL_ENVIRONMENT = LABEL_PREFIX + "environment"
LABEL_SERVICE = LABEL_PREFIX + "service"
LABEL_REVISION = LABEL_PREFIX + "revision"
LABEL_CONFIG_HASH = LABEL_PREFIX + "config-hash"
LABEL_IMAGE = LABEL_PREFIX + "image"
LABEL_SPEC = LABEL_PREFIX + "spec"  # spec_summary as JSON, for diffs
# The health check the container was deployed with: a rollback verifies the
# restored container with its own check, not the failed commit's.
LABEL_HEALTH = LABEL_PREFIX + "health"
# The env values a plan may show in clear (not the secret-looking ones: see
# shown_env); outside spec_summary, so config hashes do not change with it.
LABEL_ENV = LABEL_PREFIX + "env"

# Labels cannot change after a container is created, so a container's role
# lives in its name, which can: the active one is ``<env>-<service>``, a new
# one being health-checked beside it ``<env>-<service>-next``, a retired one
# kept for rollback ``<env>-<service>-old-<config hash>``.
ROLE_ACTIVE = "active"
ROLE_CANDIDATE = "next"
ROLE_RETIRED = "old"


def spec_summary(service: Service) -> dict:
    """The shape of a service's container, safe to show and to store in a label.

    Env values and secrets appear only as short hashes, so a plan can say
    *which* keys changed without printing a value.
    """

    def masked(value: str) -> str:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]

    return {
        "image": str(service.image),
        "command": list(service.command) if service.command is not None else None,
        "env": {key: masked(value) for key, value in service.env},
        "ports": [f"{p.host_ip + ':' if p.host_ip else ''}{p.host_port}:{p.container_port}/{p.protocol}" for p in service.ports],
        "volumes": [f"{v.source}:{v.target}{':ro' if v.read_only else ''}" for v in service.volumes],
        "networks": list(service.networks),
        "restart": service.restart,
        "resources": {"memory": service.resources.memory, "cpus": service.resources.cpus},
        "labels": dict(service.labels),
        "secrets": dict(_secret_entry(s) for s in service.secrets),
    }


def _secret_entry(secret: SecretRef) -> tuple[str, str]:
    """A secret's line in the spec: where the container finds it, and a hash
    that changes with its value and reveals nothing of it.

    The keyed digest when the shell has computed one; else a hash of the
    reference (host path or ciphertext, both public), which still changes
    when an encrypted value is rotated.  An env-delivered secret keeps the
    line it always had, so existing containers keep their config hash.
    """
    if secret.digest is not None:
        fingerprint = secret.digest
    else:
        fingerprint = "sha256:" + hashlib.sha256(f"{secret.name}|{secret.file}|{secret.encrypted}".encode()).hexdigest()[:12]
    if secret.delivery == "env":
        return secret.env, fingerprint
    return (f"{secret.path} (${secret.env})" if secret.env else secret.path), fingerprint


def shown_env(service: Service) -> dict[str, str]:
    """The service's env values a plan shows in clear: all but those whose
    name or value looks like a secret (the validator's rule)."""
    from reconciler.core.secret_rule import looks_like_plain_secret

    return {key: value for key, value in service.env if not looks_like_plain_secret(key, value)}


def health_to_label(check: HealthCheck) -> str:
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in check.__dict__.items()}
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def health_from_label(text: str | None) -> HealthCheck | None:
    """The check stored by ``health_to_label``; None when absent or unreadable."""
    if not text:
        return None
    try:
        data = json.loads(text)
        data["command"] = tuple(data.get("command") or ())
        return HealthCheck(**data)
    except (ValueError, TypeError):
        return None


def config_hash(service: Service) -> str:
    """A short stable hash of everything that shapes the container.

    Two containers with the same hash were created from the same image digest
    and the same configuration, so a retained container can be restarted as
    an exact rollback target.  Health and rollout settings are excluded: they
    steer the deploy, not the container.
    """
    blob = json.dumps(spec_summary(service), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def labels_for(service: Service, environment: str, revision: str) -> dict[str, str]:
    """The labels a container of ``service`` is created with: the service's own, then ours."""
    labels = dict(service.labels)
    labels.update(
        {
            LABEL_ENVIRONMENT: environment,
            LABEL_SERVICE: service.name,
            LABEL_REVISION: revision,
            LABEL_CONFIG_HASH: config_hash(service),
            LABEL_IMAGE: str(service.image),
            LABEL_SPEC: json.dumps(spec_summary(service), sort_keys=True, separators=(",", ":")),
            LABEL_HEALTH: health_to_label(service.health),
            LABEL_ENV: json.dumps(shown_env(service), sort_keys=True, separators=(",", ":")),
        }
    )
    return labels


def container_name(environment: str, service: str, role: str = ROLE_ACTIVE, config: str = "") -> str:
    """The name a service's container has on a host in ``role``."""
    base = f"{environment}-{service}"
    if role == ROLE_ACTIVE:
        return base
    if role == ROLE_CANDIDATE:
        return f"{base}-{ROLE_CANDIDATE}"
    return f"{base}-{ROLE_RETIRED}-{config}"


def retired_name(environment: str, container: "ObservedContainer") -> str:
    """The name an active container gets when it is retired (kept for rollback).

    Shared by the executor, which renames, and the planner, which must know
    that name to leave the fresh retiree out of pruning.
    """
    return container_name(environment, container.service or "", ROLE_RETIRED, container.config_hash or container.id[:12])


@dataclass(frozen=True)
class ContainerSpec:
    """What creating a container needs beyond the service: its identity."""

    environment: str
    revision: str
    name: str


# ---------------------------------------------------------------- observed


@dataclass(frozen=True)
class ObservedContainer:
    """A container as the engine reports it (only what the planner needs)."""

    id: str
    name: str
    state: str  # created, running, restarting, exited, paused, dead
    labels: tuple[tuple[str, str], ...] = ()
    image_id: str = ""
    health: str | None = None  # the engine's HEALTHCHECK status, if the image has one
    restart_count: int = 0
    finished_at: str = ""  # RFC 3339, when known; orders retired containers
    created: float = 0.0  # seconds since the epoch; orders them when finished_at is unknown

    def label(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return default

    @property
    def managed(self) -> bool:
        return self.label(LABEL_ENVIRONMENT) is not None

    @property
    def service(self) -> str | None:
        return self.label(LABEL_SERVICE)

    @property
    def environment(self) -> str | None:
        return self.label(LABEL_ENVIRONMENT)

    @property
    def role(self) -> str | None:
        """active, next or old, read from the name (see ROLE_*)."""
        if not self.managed or not self.service:
            return None
        base = container_name(self.environment, self.service)
        if self.name == base:
            return ROLE_ACTIVE
        if self.name == container_name(self.environment, self.service, ROLE_CANDIDATE):
            return ROLE_CANDIDATE
        if self.name.startswith(f"{base}-{ROLE_RETIRED}-"):
            return ROLE_RETIRED
        return None

    @property
    def revision(self) -> str | None:
        return self.label(LABEL_REVISION)

    @property
    def config_hash(self) -> str | None:
        return self.label(LABEL_CONFIG_HASH)

    @property
    def image(self) -> str | None:
        return self.label(LABEL_IMAGE)

    @property
    def spec(self) -> dict:
        raw = self.label(LABEL_SPEC)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    @property
    def shown_env(self) -> dict[str, str]:
        """The env values this container was created with that may be shown
        (LABEL_ENV); empty for a container made before the label existed."""
        raw = self.label(LABEL_ENV)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def health_check(self) -> HealthCheck | None:
        return health_from_label(self.label(LABEL_HEALTH))

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class ObservedHost:
    """What one host runs right now."""

    name: str
    containers: tuple[ObservedContainer, ...] = ()
    # repo@digest references present on the host; None when not observed
    # (the real driver skips that list: a no-op reconcile needs only the
    # containers, and a deploy's pre-flight checks each image it needs).
    images: tuple[str, ...] | None = ()
    # The host's router as observed (servers, config); None when it was not
    # observed (no exposed service there, or a caller that reads containers only).
    router: "RouterView | None" = None

    def managed(self, environment: str) -> tuple[ObservedContainer, ...]:
        return tuple(c for c in self.containers if c.environment == environment)

    def unmanaged(self) -> tuple[ObservedContainer, ...]:
        """Containers no environment manages (an environment's router container is managed, apart)."""
        return tuple(c for c in self.containers if not c.managed and c.label(LABEL_ROUTER) is None)
