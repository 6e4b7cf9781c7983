"""The host driver: observe and act on one host's Docker engine over SSH.

The Engine API is spoken over the host's single SSH connection: each HTTP
connection of docker-py's pool is one SSH channel running
``docker system dial-stdio`` on the host (the transport docker-py itself uses
for ``ssh://`` URLs), but over *our* connection, so the pinned host key and
timeouts of ``reconciler.adapters.ssh`` apply.  Health probes of a container's port go
through the same connection as a ``direct-tcpip`` channel to the container's
address on the host, so no port needs to be published for a check.
"""

from __future__ import annotations

import json
import logging
import time
import docker
import docker.errors
import paramiko
import requests.exceptions
from docker.transport.sshconn import SSHHTTPAdapter
from fabric import Connection

from reconciler.core import model
from reconciler.errors import EngineError, HostUnreachable
from reconciler.core.health import CheckResult
from reconciler.core.model import ContainerSpec, HealthCheck, ImageRef, ObservedContainer, ObservedHost, Service

# A health probe that finds the port not yet listening is routine while a
# container starts; paramiko would log each refused channel as an error.
logging.getLogger("paramiko.transport").addFilter(lambda record: "open FAILED" not in record.getMessage())

# docker.io 20.10 speaks 1.41; asking for it explicitly avoids a version
# round trip before every client is usable.
API_VERSION = "1.41"


class _PinnedSSHAdapter(SSHHTTPAdapter):
    """docker-py's SSH adapter, over a paramiko client we built and pinned."""

    def __init__(self, ssh_client, host: str, timeout: float, max_pool_size: int = 4) -> None:
        self._pinned_client = ssh_client
        self._host_name = host
        super().__init__("ssh://pinned", timeout=timeout, max_pool_size=max_pool_size)

    def _create_paramiko_client(self, base_url):
        self.ssh_client = self._pinned_client
        self.ssh_params = {}

    def get_connection(self, url, proxies=None):
        # docker-py keys its pools by the full URL, so every new endpoint
        # (/version, /containers/json, /images/json, ...) would open one more
        # SSH channel and start one more `docker system dial-stdio` on the
        # host (0.2-0.4 s each).  One pool per host keeps the channels.
        return super().get_connection("http+docker://ssh", proxies)

    def _connect(self):
        # The connection was opened (and its key checked) by reconciler.adapters.ssh;
        # reconnecting here would bypass that, so a dead one is an error.
        transport = self.ssh_client.get_transport()
        if transport is None or not transport.is_active():
            raise HostUnreachable("SSH connection to the host was lost", host=self._host_name)


def engine_client(conn: Connection, *, host: str | None = None, timeout: float = 60.0) -> docker.DockerClient:
    """A docker-py client whose every request travels over ``conn``."""
    name = host or conn.host
    client = docker.DockerClient(base_url="unix:///nonexistent/reconciler.sock", version=API_VERSION)
    api = client.api
    adapter = _PinnedSSHAdapter(conn.client, name, timeout=timeout)
    api.adapters.pop("http+docker://", None)
    api.mount("http+docker://ssh", adapter)
    api._custom_adapter = adapter
    api.base_url = "http+docker://ssh"
    api.timeout = timeout
    return client


def container_labels(service: Service, environment: str, revision: str) -> dict[str, str]:
    labels = dict(service.labels)
    labels.update(
        {
            model.LABEL_ENVIRONMENT: environment,
            model.LABEL_SERVICE: service.name,
            model.LABEL_REVISION: revision,
            model.LABEL_CONFIG_HASH: model.config_hash(service),
            model.LABEL_IMAGE: str(service.image),
            model.LABEL_SPEC: json.dumps(model.spec_summary(service), sort_keys=True, separators=(",", ":")),
            model.LABEL_HEALTH: model.health_to_label(service.health),
        }
    )
    return labels


def _observed(attrs: dict) -> ObservedContainer:
    state = attrs.get("State") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    health = (state.get("Health") or {}).get("Status")
    return ObservedContainer(
        id=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        state=state.get("Status", "unknown"),
        labels=tuple(sorted(labels.items())),
        image_id=attrs.get("Image", ""),
        health=health,
        restart_count=int(attrs.get("RestartCount") or 0),
        finished_at=state.get("FinishedAt") or "",
        created=_epoch(attrs.get("Created") or ""),
    )


def _epoch(rfc3339: str) -> float:
    import datetime

    try:
        return datetime.datetime.fromisoformat(rfc3339[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


def _summarised(summary: dict) -> ObservedContainer:
    """An ObservedContainer from one entry of the engine's container list."""
    status = summary.get("Status") or ""
    health = None
    for word, value in (("(healthy)", "healthy"), ("(unhealthy)", "unhealthy"), ("(health: starting)", "starting")):
        if word in status:
            health = value
    names = summary.get("Names") or ["/" + summary["Id"][:12]]
    return ObservedContainer(
        id=summary["Id"],
        name=names[0].lstrip("/"),
        state=summary.get("State", "unknown"),
        labels=tuple(sorted((summary.get("Labels") or {}).items())),
        image_id=summary.get("ImageID", ""),
        health=health,
        created=float(summary.get("Created") or 0),
    )


class DockerHost:
    """One host: its SSH connection and its engine.  Not thread-safe; the
    executor gives each host its own worker."""

    def __init__(self, name: str, conn: Connection, *, timeout: float = 60.0) -> None:
        self.name = name
        self.conn = conn
        self.engine = engine_client(conn, host=name, timeout=timeout)

    # ------------------------------------------------------------ helpers
    def _call(self, what: str, fn, *args, missing_ok: bool = False, **kwargs):
        """Run one Engine API call; errors become the product's.

        A lost SSH connection surfaces from paramiko (SSHException,
        EOFError) or from requests; all of them mean the host is
        unreachable, which the executor treats as transient.  With
        ``missing_ok``, a 404 (no such container or image) returns None.
        """
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound as exc:
            if missing_ok:
                return None
            raise EngineError(f"{what}: {exc.explanation or exc}", host=self.name) from None
        except docker.errors.APIError as exc:
            raise EngineError(f"{what}: {exc.explanation or exc}", host=self.name) from None
        except (requests.exceptions.ConnectionError, paramiko.SSHException, EOFError, OSError) as exc:
            raise HostUnreachable(f"{what}: engine unreachable over SSH: {exc}", host=self.name) from None

    def close(self) -> None:
        try:
            self.engine.close()
        finally:
            self.conn.close()

    # ------------------------------------------------------------ observing
    def ping(self) -> str:
        """Check the engine answers; return its version."""
        return self._call("engine version", self.engine.api.version)["Version"]

    def observe(self) -> ObservedHost:
        """Every container on the host, managed or not: one Engine API call.

        The container list carries names, labels and state; inspecting each
        container would cost a round trip apiece on every drift check.
        Images are not listed: pre-flight asks for the ones a deploy needs.
        """
        summaries = self._call("list containers", self.engine.api.containers, all=True)
        containers = tuple(sorted((_summarised(s) for s in summaries), key=lambda c: c.name))
        return ObservedHost(name=self.name, containers=containers, images=None)

    def has_image(self, image: ImageRef) -> bool:
        found = self._call(f"inspect image {image}", self.engine.api.inspect_image, image.pull_ref, missing_ok=True)
        return found is not None

    def pull(self, image: ImageRef) -> None:
        """Pull by digest (by tag only when the policy allowed an unpinned image)."""
        repository, _, ref = image.pull_ref.rpartition("@") if image.digest else image.pull_ref.rpartition(":")
        def pull_all() -> None:
            # The stream is read inside _call: the connection can fail mid-pull.
            for event in self.engine.api.pull(repository, tag=ref, stream=True, decode=True):
                if "error" in event:
                    raise EngineError(f"pull {image.pull_ref}: {event['error']}", host=self.name)

        self._call("pull " + image.pull_ref, pull_all)
        if not self.has_image(image):
            raise EngineError(f"pull {image.pull_ref}: the engine reports success but has no such image", host=self.name)

    def logs_tail(self, container_id: str, lines: int = 30) -> str:
        """Evidence for a report: best effort, never the reason a run fails."""
        try:
            raw = self._call("logs", self.engine.api.logs, container_id, tail=lines, stdout=True, stderr=True)
        except (EngineError, HostUnreachable):
            return ""
        return raw.decode("utf-8", "replace")

    # ------------------------------------------------------------ acting
    def read_secret_file(self, path: str) -> str:
        """A secret's value from a file on the host; never logged."""
        with self.conn.sftp().open(path, "r") as fh:
            return fh.read().decode().rstrip("\n")

    def create(self, service: Service, spec: ContainerSpec) -> str:
        api = self.engine.api
        env = dict(service.env)
        for secret in service.secrets:
            if secret.file:
                env[secret.env] = self.read_secret_file(secret.file)
        port_bindings = {
            f"{p.container_port}/{p.protocol}": (p.host_ip, p.host_port) if p.host_ip else p.host_port
            for p in service.ports
        }
        restart = {"Name": service.restart} if service.restart != "no" else None
        host_config = api.create_host_config(
            port_bindings=port_bindings or None,
            binds=[f"{v.source}:{v.target}:{'ro' if v.read_only else 'rw'}" for v in service.volumes] or None,
            restart_policy=restart,
            mem_limit=service.resources.memory,
            nano_cpus=int(service.resources.cpus * 1e9) if service.resources.cpus else None,
            network_mode=service.networks[0] if service.networks else None,
        )
        created = self._call(
            f"create {spec.name}",
            api.create_container,
            service.image.pull_ref,
            command=list(service.command) if service.command is not None else None,
            name=spec.name,
            environment=env,
            labels=container_labels(service, spec.environment, spec.revision),
            ports=[(p.container_port, p.protocol) for p in service.ports] or None,
            host_config=host_config,
            stop_timeout=int(service.stop_timeout),
        )
        for network in service.networks[1:]:
            self._call(f"connect {spec.name} to {network}", api.connect_container_to_network, created["Id"], network)
        return created["Id"]

    def start(self, container_id: str) -> None:
        self._call(f"start {container_id[:12]}", self.engine.api.start, container_id)

    def stop(self, container_id: str, timeout: float) -> None:
        self._call(f"stop {container_id[:12]}", self.engine.api.stop, container_id, timeout=int(timeout))

    def rename(self, container_id: str, name: str) -> None:
        self._call(f"rename {container_id[:12]} to {name}", self.engine.api.rename, container_id, name)

    def remove(self, container_id: str) -> None:
        self._call(f"remove {container_id[:12]}", self.engine.api.remove_container, container_id, force=True, missing_ok=True)

    def remove_image(self, reference: str) -> None:
        """Remove an image no retained container uses; in use or gone is fine."""
        try:
            self._call(f"remove image {reference}", self.engine.api.remove_image, reference, missing_ok=True)
        except EngineError:
            pass  # 409: a container still uses it

    # ------------------------------------------------------------ health
    def inspect(self, container_id: str) -> ObservedContainer:
        return _observed(self._call(f"inspect {container_id[:12]}", self.engine.api.inspect_container, container_id))

    def _container_address(self, container_id: str) -> str:
        attrs = self._call("inspect", self.engine.api.inspect_container, container_id)
        settings = attrs.get("NetworkSettings") or {}
        if settings.get("IPAddress"):
            return settings["IPAddress"]
        for network in (settings.get("Networks") or {}).values():
            if network.get("IPAddress"):
                return network["IPAddress"]
        return "127.0.0.1"  # host networking: the service listens on the host itself

    def probe(self, container_id: str, check: HealthCheck) -> CheckResult:
        """Run one health check of ``check.kind`` against the container, now."""
        now = time.monotonic()
        current = self.inspect(container_id)
        if not current.running:
            return CheckResult(False, f"container is {current.state}", now, fatal=current.state in ("exited", "dead"))
        if current.state == "restarting" or current.restart_count > 0:
            return CheckResult(False, f"container restarted {current.restart_count} times", now)
        if check.kind == "running":
            return CheckResult(True, "running", now)
        if check.kind == "docker":
            if current.health is None:
                return CheckResult(False, "the image declares no HEALTHCHECK", now, fatal=True)
            return CheckResult(current.health == "healthy", f"docker health: {current.health}", now)
        if check.kind == "command":
            return self._probe_command(container_id, check, now)
        return self._probe_socket(container_id, check, now)

    def _probe_command(self, container_id: str, check: HealthCheck, now: float) -> CheckResult:
        api = self.engine.api
        exec_id = self._call("exec create", api.exec_create, container_id, list(check.command))["Id"]
        output = self._call("exec start", api.exec_start, exec_id).decode("utf-8", "replace")
        code = self._call("exec inspect", api.exec_inspect, exec_id).get("ExitCode")
        return CheckResult(code == 0, f"exit {code}: {output.strip()[-300:]}", now)

    def _probe_socket(self, container_id: str, check: HealthCheck, now: float) -> CheckResult:
        address = self._container_address(container_id)
        transport = self.conn.transport
        try:
            channel = transport.open_channel("direct-tcpip", (address, check.port), ("127.0.0.1", 0), timeout=check.timeout)
        except Exception as exc:  # paramiko raises ChannelException/SSHException/EOFError
            return CheckResult(False, f"connect {address}:{check.port}: {exc}", now)
        try:
            if check.kind == "tcp":
                return CheckResult(True, f"tcp {address}:{check.port} accepts", now)
            channel.settimeout(check.timeout)
            channel.sendall(f"GET {check.path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            deadline = time.monotonic() + check.timeout
            while time.monotonic() < deadline:
                data = channel.recv(65536)
                if not data:
                    break
                chunks.append(data)
            response = b"".join(chunks).decode("latin-1")
        except Exception as exc:
            return CheckResult(False, f"GET {check.path}: {exc}", now)
        finally:
            channel.close()
        head, _, body = response.partition("\r\n\r\n")
        status_line = head.split("\r\n", 1)[0]
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            return CheckResult(False, f"GET {check.path}: no HTTP status in {status_line[:80]!r}", now)
        ok = status == check.expected_status and (check.body_contains is None or check.body_contains in body)
        return CheckResult(ok, f"GET {check.path} -> {status} {body.strip()[:120]!r}", now)
