"""The host driver: observe and act on one host's Docker engine over SSH.

The Engine API is spoken over the host's single SSH connection, each HTTP
connection one channel straight to the engine's socket (or running ``docker
system dial-stdio`` where the host refuses that: ``adapters.dialstdio``), so
the pinned host key and timeouts of ``adapters.ssh`` apply.  Health probes
of a container's port go through the same connection as a ``direct-tcpip``
channel to the container's address on the host, so no port needs to be
published for a check.

The connection heals.  One that dies (the host's sshd restarted and took
the session along, the host went down and came back) makes the failing call
``HostUnreachable`` naming the host and the operation; the next call
reopens the connection first, and a read is retried once on the new one.
A change is never retried blindly: whether it happened is for the caller
to find out.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from typing import TYPE_CHECKING, Callable

import docker.errors
import paramiko
import requests.exceptions

from reconciler.adapters import engine_json, secrets, ssh
from reconciler.adapters.dialstdio import (
    LOST_CONNECTION, LOST_REQUESTS, EngineChannels, engine_client_over)
from reconciler.core import managed
from reconciler.core.health import CheckResult
from reconciler.core.model import HealthCheck, ImageRef, Service
from reconciler.core.managed import ContainerSpec, ObservedContainer, ObservedHost
from reconciler.errors import EngineError, HostUnreachable, SecretUnreadable

if TYPE_CHECKING:
    from fabric import Connection


class _ProbeNoise(logging.Filter):
    """A health probe that finds the port not yet listening is routine while
    a container starts; paramiko would log each refused channel as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


_PROBE_NOISE = _ProbeNoise()
logging.getLogger(ssh.LOG_CHANNEL).addFilter(_PROBE_NOISE)


def _without_host(exc: BaseException, host: str) -> str:
    text = str(exc)
    return text[len(host) + 2:] if text.startswith(f"{host}: ") else text


class DockerHost:
    """One host: its SSH connection and its engine.  The executor gives each
    host its own worker; reads may come from other threads at the same time
    (the agent's API observing beside a reconcile; a plan's router requests):
    every request is its own channel of the one connection (paramiko's
    transport and urllib3's pool are thread-safe), and a lost connection is
    reopened once, by the first thread to find it lost
    (tests/test_driver_threads.py).

    With ``reconnect`` (a function returning a new connection through the
    same pinned access, as ``fleet.open_hosts`` gives), a lost connection is
    replaced before the next call; ``log(event, **fields)`` hears of it.
    ``docker_socket`` is the host entry's: where the engine listens.
    """

    def __init__(self, name: str, conn: Connection, *, timeout: float = 60.0,
                 reconnect: Callable[[], Connection] | None = None, log: Callable[..., None] | None = None,
                 docker_socket: str | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self._reconnect = reconnect
        self._log = log or (lambda event, **fields: None)
        self._lost: str | None = None  # why the connection is no longer trusted
        self._closed = False
        self._reopening = threading.Lock()
        self._bind(conn)
        # The engine client asks for its channels on whatever connection is
        # current, so reopening does not rebuild it; the pooled channels of
        # a dead connection are closed, and the pool drops them.
        self.engine_channels = EngineChannels(name, lambda: self.transport, docker_socket=docker_socket, timeout=timeout)
        self.engine = engine_client_over(self.engine_channels, timeout=timeout)

    def _bind(self, conn: Connection) -> None:
        self.conn = conn
        if conn.transport is not None:
            logging.getLogger(conn.transport.get_log_channel()).addFilter(_PROBE_NOISE)

    # ------------------------------------------------------------ the connection
    @property
    def identity_file(self) -> str | None:
        """The SSH identity this host is reached with (it keys host-file secrets' digests)."""
        return ssh.identity_file(self.conn)

    @property
    def transport(self) -> paramiko.Transport | None:
        return self.conn.transport

    def open_channel(self, kind: str = "session", dest_addr=None, src_addr=None, *, what: str, timeout: float) -> paramiko.Channel:
        """A channel on the current connection (reopened first if it was lost);
        ``HostUnreachable`` if the connection is gone, the host's refusal as
        paramiko raises it otherwise.  The database tunnel uses this too."""
        self._ensure_open(what)
        conn = self.conn
        try:
            return ssh.open_channel(conn.transport, kind, dest_addr, src_addr, host=self.name, what=what, timeout=timeout)
        except HostUnreachable as exc:
            self._lose(what, exc, conn)
            raise

    def _alive(self) -> bool:
        return ssh.alive(self.transport)

    def _lose(self, what: str, exc: BaseException, conn=None) -> None:
        if conn is not None and conn is not self.conn:
            return  # it failed on a connection another thread has replaced already
        if self._lost is None:
            self._lost = f"{what}: {ssh.innermost(exc)}"
            self._log("connection-lost", host=self.name, operation=what, error=ssh.innermost(exc))

    def _ensure_open(self, what: str) -> None:
        """Reopen a connection that is lost or known dead, before ``what`` uses it."""
        if self._closed:
            raise HostUnreachable(f"{what}: the connection to the host was closed", host=self.name)
        if self._lost is None and self._alive():
            return
        with self._reopening:
            if self._closed:
                raise HostUnreachable(f"{what}: the connection to the host was closed", host=self.name)
            if self._lost is None and self._alive():
                return  # another thread reopened it while this one waited
            why = self._lost or "the SSH connection was closed"
            if self._reconnect is None:
                self._lost = why
                raise HostUnreachable(f"{what}: {why}; no way to reconnect", host=self.name)
            self.reopen(why, what)

    def reopen(self, why: str, what: str = "reconnect") -> None:
        """Replace the connection with a new one through the same pinned
        access; ``HostUnreachable`` (or a key error) if the host does not let us."""
        old = self.conn
        try:
            old.close()
        except ssh.SSH_FAILURES:
            pass  # it is dead already
        try:
            conn = self._reconnect()
        except HostUnreachable as exc:
            self._lost = why
            raise HostUnreachable(f"{what}: reconnecting after '{why}' failed: {_without_host(exc, self.name)}",
                                  host=self.name) from None
        self._bind(conn)
        self._lost = None
        self._log("connection-reopened", host=self.name, operation=what, after=why)

    def over_ssh(self, what: str, fn: Callable, *args, retry: bool = False, **kwargs):
        """Run ``fn`` over the connection; a lost connection becomes
        ``HostUnreachable`` naming the host and ``what``, and the next call
        reopens it.  With ``retry`` (reads only: nothing changes on the host),
        the call is made once more, on a reopened connection."""
        attempts = 2 if retry and self._reconnect is not None else 1
        for _ in range(attempts):
            self._ensure_open(what)
            conn = self.conn
            try:
                return fn(*args, **kwargs)
            except requests.exceptions.RequestException as exc:
                if not isinstance(exc, LOST_REQUESTS):
                    raise  # the engine answered (docker's APIError: a 404, a 409), or a bug
                failure: BaseException = exc
            except LOST_CONNECTION as exc:
                failure = exc
            except AttributeError as exc:
                if self._alive():
                    raise  # a bug, not a lost connection
                failure = exc  # a dead transport re-raises what its thread died of
            self._lose(what, failure, conn)
        if isinstance(failure, HostUnreachable):
            reason = _without_host(failure, self.name)
        else:
            reason = f"SSH connection failed: {ssh.innermost(failure)}"
        raise HostUnreachable(f"{what}: {reason}", host=self.name) from None

    def _call(self, what: str, fn, *args, missing_ok: bool = False, retry: bool = False, **kwargs):
        """Run one Engine API call; errors become the product's.

        With ``missing_ok``, a 404 (no such container or image) returns None.
        """
        try:
            return self.over_ssh(what, fn, *args, retry=retry, **kwargs)
        except docker.errors.NotFound as exc:
            if missing_ok:
                return None
            raise EngineError(f"{what}: {exc.explanation or exc}", host=self.name) from None
        except docker.errors.APIError as exc:
            raise EngineError(f"{what}: {exc.explanation or exc}", host=self.name) from None

    def check(self, timeout: float) -> None:
        """The engine answers within ``timeout``, on this connection as it is:
        no reconnect, no retry (the connection cache's test before reuse)."""
        if self._lost is not None or not self._alive():
            raise HostUnreachable(f"engine version: {self._lost or 'the SSH connection is closed'}", host=self.name)
        api = self.engine.api
        saved, api.timeout = api.timeout, timeout
        try:
            self._call("engine version", api.version)
        finally:
            api.timeout = saved

    def close(self) -> None:
        self._closed = True
        try:
            self.engine.close()
        finally:
            self.conn.close()

    # ------------------------------------------------------------ observing
    def ping(self) -> str:
        """Check the engine answers; return its version."""
        return self._call("engine version", self.engine.api.version, retry=True)["Version"]

    def observe(self) -> ObservedHost:
        """Every container on the host, managed or not: one Engine API call.

        The container list carries names, labels and state; inspecting each
        container would cost a round trip apiece on every drift check.
        Images are not listed: pre-flight asks for the ones a deploy needs.
        """
        summaries = self._call("list containers", self.engine.api.containers, all=True, retry=True)
        containers = tuple(sorted((engine_json.from_list_entry(s) for s in summaries), key=lambda c: c.name))
        return ObservedHost(name=self.name, containers=containers, images=None)

    def has_image(self, image: ImageRef) -> bool:
        found = self._call(f"inspect image {image}", self.engine.api.inspect_image, image.pull_ref, missing_ok=True, retry=True)
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
            raw = self._call("logs", self.engine.api.logs, container_id, tail=lines, stdout=True, stderr=True, retry=True)
        except (EngineError, HostUnreachable):
            return ""
        return raw.decode("utf-8", "replace")

    # ------------------------------------------------------------ acting
    def read_secret_file(self, path: str) -> str:
        """A secret's value from a file on the host; never logged.

        Over SFTP when the host's sshd offers it, else through an exec
        channel running ``cat``.  Each read has its own channel: a cached
        SFTP session kept on the connection outlives its channel
        and fails every later read with ``Channel closed.``
        """
        what = f"read secret file {path}"
        data = self.over_ssh(what, self._read_file, path, what, retry=True)
        return data.decode().rstrip("\n")

    def _read_file(self, path: str, what: str) -> bytes:
        user = self.conn.user
        way_out = (f"create it on {self.name}, readable by {user}, or change the service's "
                   f"secrets file to where the secret is")
        sftp = ssh.open_sftp(self.transport, host=self.name, what=f"{what} over SFTP", timeout=self.timeout)
        if sftp is not None:
            try:
                with sftp.open(path, "rb") as fh:
                    return fh.read()
            except OSError as exc:
                if sftp.sock.closed or not self._alive():
                    raise  # the connection, not the file
                raise SecretUnreadable(f"{what} over SFTP: {exc.strerror or exc}; {way_out}", host=self.name) from None
            finally:
                sftp.close()
        status, out, err = ssh.run(self.conn, f"cat -- {shlex.quote(path)}", host=self.name,
                                   what=f"{what} with cat (no SFTP)", timeout=self.timeout)
        if status == 0:
            return out
        said = err.decode("utf-8", "replace").strip()[-300:] or f"exit {status}"
        raise SecretUnreadable(
            f"{what}: the host's sshd offers no SFTP subsystem, and `cat` over an exec channel failed "
            f"(exit {status}: {said}); {way_out}, or give its sshd `Subsystem sftp internal-sftp`",
            host=self.name)

    def create(self, service: Service, spec: ContainerSpec) -> str:
        api = self.engine.api
        # Decrypted here, in memory; file-delivered ones are written to a tmpfs
        # on the host and mounted at /run/secrets (reconciler.adapters.secrets).
        delivery = secrets.deliver(self, service, f"{spec.environment}/{service.name}")
        env = {**dict(service.env), **delivery.env}
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
            mounts=delivery.mounts() or None,
        )
        try:
            created = self._call(
                f"create {spec.name}",
                api.create_container,
                service.image.pull_ref,
                command=list(service.command) if service.command is not None else None,
                name=spec.name,
                environment=env,
                labels=managed.labels_for(service, spec.environment, spec.revision),
                ports=[(p.container_port, p.protocol) for p in service.ports] or None,
                host_config=host_config,
                stop_timeout=int(service.stop_timeout),
            )
        except BaseException:
            secrets.discard(self, delivery.directory)  # no container mounts it
            raise
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
        attrs = self._call(f"inspect {container_id[:12]}", self.engine.api.inspect_container, container_id,
                           missing_ok=True, retry=True)
        try:
            self._call(f"remove {container_id[:12]}", self.engine.api.remove_container, container_id, force=True,
                       missing_ok=True)
        except EngineError as exc:
            # A removal the engine is already doing (asked by a run that
            # died, or by hand) ends the same way: wait for it, bounded.
            if "already in progress" not in str(exc):
                raise
            self._wait_gone(container_id, timeout=60.0)
        secrets.discard(self, secrets.directory_of(attrs))  # its secret files go with it

    def _wait_gone(self, container_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._call(f"inspect {container_id[:12]}", self.engine.api.inspect_container, container_id,
                         missing_ok=True, retry=True) is not None:
            if time.monotonic() > deadline:
                raise EngineError(f"remove {container_id[:12]}: still being removed after {timeout:.0f}s", host=self.name)
            time.sleep(0.2)

    def remove_image(self, reference: str) -> None:
        """Remove an image no retained container uses; in use or gone is fine."""
        try:
            self._call(f"remove image {reference}", self.engine.api.remove_image, reference, missing_ok=True)
        except EngineError:
            pass  # 409: a container still uses it

    # ------------------------------------------------------------ health
    def inspect(self, container_id: str) -> ObservedContainer:
        return engine_json.from_inspect(self._call(f"inspect {container_id[:12]}", self.engine.api.inspect_container, container_id, retry=True))

    def address(self, container_id: str) -> str:
        """The container's address on the host (its first network's): where the host's router sends requests."""
        return self._container_address(container_id)

    def _container_address(self, container_id: str) -> str:
        attrs = self._call(f"inspect {container_id[:12]}", self.engine.api.inspect_container, container_id, retry=True)
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
        try:
            channel = self.open_channel("direct-tcpip", (address, check.port), ("127.0.0.1", 0),
                                        what=f"{check.kind} check of {address}:{check.port}", timeout=check.timeout)
        except ssh.SSH_FAILURES as exc:  # refused or timed out on a live connection: the check fails
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
        except ssh.SSH_FAILURES as exc:
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
