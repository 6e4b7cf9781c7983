"""The data reconciler reasons about: the desired state, as the schema parses it.

What a container of ours carries (labels, roles in its name, the config
hash) and what is observed of containers and hosts: ``core.managed``.

Pure: frozen dataclasses and functions over them, no I/O.  Mappings are kept
as sorted tuples of pairs so that every value is hashable and compares by
equality, which is what lets the planner be tested by equality on plans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# A reference is [registry[:port]/]path[:tag][@digest]; the registry part is
# recognised by a '.' or ':' or being 'localhost', as docker does.
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclass(frozen=True, order=True)
class ImageRef:
    """An image reference: repository, optional tag, optional digest.

    The tag is kept for people (ops read and edit it); the digest is what
    runs.  ``pinned`` is true when a digest is present.
    """

    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        """Parse ``repo[:tag][@sha256:...]``; raise ValueError with the reason."""
        if not isinstance(text, str) or not text or text != text.strip():
            raise ValueError(f"image reference must be a non-empty string without spaces: {text!r}")
        rest, _, digest = text.partition("@")
        if "@" in text and not _DIGEST_RE.match(digest):
            raise ValueError(f"digest must be sha256: followed by 64 hex digits: {digest!r}")
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise ValueError(f"invalid tag {tag!r}")
        parts = rest.split("/")
        first = parts[0]
        has_registry = len(parts) > 1 and ("." in first or ":" in first or first == "localhost")
        path = parts[1:] if has_registry else parts
        if not path or not all(_PATH_COMPONENT_RE.match(p) for p in path):
            raise ValueError(f"invalid repository name {rest!r}")
        return cls(repository=rest, tag=tag, digest=digest or None)

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    @property
    def pull_ref(self) -> str:
        """What to ask the engine for: by digest when pinned, else by tag."""
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or 'latest'}"

    def with_digest(self, digest: str) -> "ImageRef":
        return ImageRef(self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class Host:
    """A machine reached over SSH that runs a Docker engine."""

    name: str
    address: str
    user: str = "root"
    port: int = 22
    groups: tuple[str, ...] = ()
    # The engine's Unix socket on the host; None: the engine's default
    # (/var/run/docker.sock), else the host's docker CLI's own choice.
    docker_socket: str | None = None


@dataclass(frozen=True)
class HealthCheck:
    """How to decide a container is healthy.

    kind: ``http`` (GET path on port, expect status, optional body substring),
    ``tcp`` (connect to port), ``command`` (run argv inside the container,
    exit 0), ``docker`` (the image's own HEALTHCHECK), ``running`` (only:
    still running and not restarting).  Every kind also requires running.
    Times are seconds.
    """

    kind: Literal["http", "tcp", "command", "docker", "running"] = "running"
    port: int | None = None
    path: str = "/"
    expected_status: int = 200
    body_contains: str | None = None
    command: tuple[str, ...] = ()
    interval: float = 1.0
    timeout: float = 2.0
    start_period: float = 0.0  # a slow starter's extra time: the deadline counts from its end
    successes: int = 1
    deadline: float = 60.0

    @property
    def allowed(self) -> float:
        """How long a new container has, from its start, to become healthy
        (or the router to see it UP): the start period, then the deadline."""
        return self.start_period + self.deadline


@dataclass(frozen=True)
class Rollout:
    """How a service moves across its hosts.

    ``batch_size`` hosts at a time; ``strategy`` ``start-first`` runs the new
    container beside the old one (only possible without a fixed host port),
    ``stop-first`` stops the old one first, ``blue-green`` switches the
    host's router from the old one to the new one (every service with
    ``expose`` does), ``auto`` picks blue-green with ``expose``, else
    start-first when the service publishes no host port.
    """

    batch_size: int = 1
    strategy: Literal["auto", "start-first", "stop-first", "blue-green", "canary"] = "auto"
    # After the last switch, the router's check and error counters for the new
    # version are watched this long; a failure switches every host back (core.canary).
    watch: float = 0.0
    # The abort rule of the watch and of a canary's pauses: the new version's
    # errors (the router's counters: connection and response errors and 5xx
    # answers) above ``max_errors`` (a count) or ``max_error_rate`` (a share
    # of its requests) fail the deploy.  ``rollout.abort.errors`` sets one.
    max_errors: int | None = None
    max_error_rate: float | None = 0.01
    canary: "Canary | None" = None  # strategy canary: the steps, pauses, stickiness, QA routing


@dataclass(frozen=True)
class Canary:
    """A canary rollout through the hosts' routers (``core.canary``).

    ``steps``: the new version's share of new requests, in percent, strictly
    increasing and ending at 100 (a first 0 is a step for QA traffic only);
    after each step but the last the rollout holds ``pause`` seconds and
    aborts to the old version when the new one's errors break the rollout's
    abort rule (``Rollout.max_errors``/``max_error_rate``) or the router sees
    it DOWN.  ``sticky``: a client keeps the version it got (a cookie the
    router inserts).  ``qa_header``/``qa_cookie``: a request carrying that
    header or cookie goes to the new version from the first step on.
    """

    steps: tuple[int, ...] = (10, 50, 100)
    pause: float = 60.0
    sticky: bool = True
    qa_header: str | None = None
    qa_cookie: str | None = None


@dataclass(frozen=True, order=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = ""


@dataclass(frozen=True, order=True)
class VolumeMount:
    source: str
    target: str
    read_only: bool = False


SECRETS_DIR = "/run/secrets"  # where ``as: file`` secrets appear inside the container


@dataclass(frozen=True, order=True)
class SecretRef:
    """A secret given by reference only: a file on the host or an encrypted value.

    ``file`` is a path on the host whose content becomes the value (read on
    the host, never logged); ``encrypted`` is an age-armored ciphertext to
    the environment's recipient, decrypted in the agent's memory at deploy
    time (``reconciler.adapters.secrets``).

    ``delivery`` ``env``: the container sees the value in the variable
    ``env``.  ``file``: it sees a read-only file ``/run/secrets/<name>`` on a
    tmpfs, and ``env`` (optional) names a variable holding that path (the
    ``*_FILE`` convention), so the value is in no ``docker inspect``.

    ``digest`` is a keyed hash of the decrypted value (HMAC with a key
    derived from the agent's age identity), filled in by the shell
    (``secrets.resolve``): the config hash then changes exactly when the
    value does, and reveals nothing about it.
    """

    name: str
    env: str | None
    file: str | None = None
    encrypted: str | None = None
    delivery: Literal["env", "file"] = "env"
    digest: str | None = None

    @property
    def path(self) -> str | None:
        """Where a file-delivered secret appears inside the container."""
        return f"{SECRETS_DIR}/{self.name}" if self.delivery == "file" else None


@dataclass(frozen=True)
class Resources:
    memory: str | None = None  # e.g. "256m"
    cpus: float | None = None


@dataclass(frozen=True)
class Expose:
    """How a service is reached through its hosts' router: HTTP for these
    host names and/or this path (and below), to ``port`` in the container.
    ``drain``: how long a switch waits for the old container's sessions to
    end before it takes it out anyway."""

    port: int
    hostnames: tuple[str, ...] = ()  # none: any host name
    path: str | None = None  # None: any path
    drain: float = 30.0
    # Traffic control through the router (core.traffic): copies to green
    # before a switch, requests held, a maintenance page.
    mirror: "Mirror | None" = None
    pause: "Pause | None" = None  # held now, until the field goes (``reconciler pause``/``resume``)
    database_pause: "Pause | None" = None  # held while a deploy's database steps run
    maintenance: "Maintenance | None" = None  # 503 with the page while the field is there


@dataclass(frozen=True)
class Mirror:
    """``expose.mirror``: before each switch, ``percent`` of live requests are
    also sent to green for ``duration`` seconds; green's answers are discarded."""

    percent: int
    duration: float


@dataclass(frozen=True)
class Pause:
    """Requests held at the router (never failed) for at most ``deadline``
    seconds each, then answered 503."""

    deadline: float = 30.0


@dataclass(frozen=True)
class Maintenance:
    """Every request answered 503 with ``page`` (HTML) while declared."""

    page: str | None = None  # None: the router's default page


@dataclass(frozen=True)
class Migrations:
    """Database migrations a service declares (see the database issue)."""

    path: str | None = None  # directory inside the image with NNNN_slug.{expand,contract}.sql
    command: tuple[str, ...] = ()  # one-off container command, told the phase via env
    allow_contract: bool = False
    soak: float = 3600.0


@dataclass(frozen=True)
class Service:
    """One service as desired: the image it runs, where, and with what config."""

    name: str
    image: ImageRef
    hosts: tuple[str, ...]  # resolved host names, groups expanded, sorted
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[PortMapping, ...] = ()
    volumes: tuple[VolumeMount, ...] = ()
    networks: tuple[str, ...] = ()
    restart: str = "unless-stopped"
    resources: Resources = field(default_factory=Resources)
    labels: tuple[tuple[str, str], ...] = ()
    health: HealthCheck = field(default_factory=HealthCheck)
    rollout: Rollout = field(default_factory=Rollout)
    depends_on: tuple[str, ...] = ()
    secrets: tuple[SecretRef, ...] = ()
    migrations: Migrations | None = None
    stop_timeout: float = 10.0
    expose: Expose | None = None  # served through the hosts' router (blue-green)

    @property
    def strategy(self) -> Literal["start-first", "stop-first", "blue-green", "canary"]:
        if self.expose is not None:  # the schema refuses expose with another strategy
            return "canary" if self.rollout.strategy == "canary" else "blue-green"
        if self.rollout.strategy != "auto":
            return self.rollout.strategy
        return "stop-first" if self.ports else "start-first"


@dataclass(frozen=True)
class Policy:
    """What an environment allows."""

    require_digest: bool = True
    prune: bool = False
    drift: Literal["report", "heal"] = "report"
    keep_retired: int = 3
    parallel_hosts: int = 4
    on_failure: Literal["revert", "note"] = "revert"
    drift_interval: float = 300.0
    # Deploy only commits whose signature verifies against the agent's trusted
    # keys (reconciler.adapters.signatures); the pre-receive hook refuses the others.
    require_signed: bool = False


@dataclass(frozen=True)
class Database:
    kind: Literal["postgresql"] = "postgresql"
    dsn_file: str | None = None  # a file on the agent's machine holding the DSN
    via_host: str | None = None  # reach it through this host's SSH connection
    name: str | None = None
    backup: Literal["always", "when-migrating"] = "always"


@dataclass(frozen=True)
class RouterConfig:
    """The HAProxy of every host that runs an exposed service (``router:``).

    ``{host}`` and ``{address}`` in any value stand for the host's name and
    address, so one block describes hosts whose files differ by name.
    """

    bind: str = ":80"  # the one HTTP frontend every exposed service of a host shares
    admin: str = "127.0.0.1:9901"  # its Runtime API on the host's loopback, reached through SSH
    config_file: str = "/etc/haproxy/haproxy.cfg"  # written by reconciler
    reload: str = "systemctl reload haproxy"  # a shell line on the host, after a checked config is in place
    check: str = "/usr/sbin/haproxy -c -q -f"  # + a candidate config; full path: not on a non-root PATH
    socket: str | None = None  # a unix admin socket (seamless reloads; an image router's successor's listeners)
    state_file: str | None = None  # server-state file: check states survive a reload
    log: str | None = "/dev/log"
    # Run HAProxy as a container of this pinned image on each host that needs
    # a router, instead of the host's package (core.router_image).
    image: ImageRef | None = None


@dataclass(frozen=True)
class Environment:
    """The whole desired state of one environment at one commit."""

    name: str
    hosts: tuple[Host, ...]
    services: tuple[Service, ...]
    policy: Policy = field(default_factory=Policy)
    database: Database | None = None
    known_hosts: str = "known_hosts"  # path inside the repository
    router: RouterConfig | None = None

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)
