"""What the database phase needs from a Docker host (the ``DatabaseHost`` seam).

- the files in a directory of an image: the migrations the new release
  ships, read from a created, never started container (removed again);
- the facts about an image: its id and creation time, which order a release
  against an image whose migration command ran a contract;
- a one-off container of an image that runs a migration command and exits;
- a secret file on the host (a migration command gets the service's secrets);
- a tunnel to the database through the host's SSH connection (``via_host``).

``EngineDatabaseHost`` implements them over a ``hosts.DockerHost``'s docker
client and SSH connection; ``tests/fakes.py``'s ``FakeHost`` implements them
in memory, so the database phase runs on fakes.  ``database_host`` picks: a
driver that has the methods itself is used as it is.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import docker.errors
import paramiko
import requests.exceptions
from psycopg.conninfo import conninfo_to_dict

from reconciler.adapters.db.connection import DatabaseError
from reconciler.adapters.db.migrate import MigrationFailed
from reconciler.adapters.db.tunnel import Tunnel
from reconciler.core.contracts import ImageFacts
from reconciler.core.migrations import MigrationError
from reconciler.core.model import ImageRef
from reconciler.errors import EngineError, HostUnreachable

LABEL_ROLE = "io.reconciler.migrations"  # marks our one-off containers for a human reading `docker ps -a`
CREATED_LABEL = "org.opencontainers.image.created"
MAX_FILES_BYTES = 16 << 20  # a migrations directory is text; more is a wrong path
# What a lost SSH connection surfaces as, from paramiko or requests (as in hosts.DockerHost).
_LOST = (requests.exceptions.ConnectionError, paramiko.SSHException, EOFError, OSError)


@runtime_checkable
class DatabaseHost(Protocol):
    name: str

    def read_image_files(self, image: ImageRef, path: str) -> list[tuple[str, str]]:
        """(name, text) of the regular files directly in ``path`` inside ``image``;
        MigrationError when the image has no such directory."""

    def image_facts(self, image: ImageRef) -> ImageFacts: ...

    def run_one_off(self, image: ImageRef, argv: Sequence[str], *, env: Mapping[str, str], network: str | None,
                    labels: Mapping[str, str], timeout: float) -> tuple[int, str]:
        """Run ``argv`` in a new container of ``image``, wait for it, remove it;
        return (exit code, last lines of its output).  MigrationFailed when its
        exit cannot be seen (it may have done anything)."""

    def read_secret_file(self, path: str) -> str: ...

    def open_tunnel(self, address: str, port: int) -> Any:
        """A ``tunnel.Tunnel``-like context manager to ``address:port`` as seen
        from the host: entering starts it, ``dsn(dsn)`` points a DSN at it."""


def database_host(driver: Any) -> DatabaseHost:
    """The driver itself when it implements the seam, else its Engine API adapter."""
    if isinstance(driver, DatabaseHost):
        return driver
    return EngineDatabaseHost(driver)


class EngineDatabaseHost:
    """The seam over a ``hosts.DockerHost``: its docker client and SSH connection."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.name = driver.name

    @property
    def _api(self):
        return self.driver.engine.api

    def _call(self, what: str, fn, *args, read: bool = False, **kwargs):
        """One Engine API call; errors become the product's.  A 4xx is the
        request's fault (stalled: a human fixes the image or the settings), a
        5xx the engine's, a lost connection the network's (transient).

        Through the driver's ``over_ssh`` when it has one: a lost connection
        is reopened before the next call, and a read (``read``: nothing
        changes on the host) is tried once more on the new one."""
        over_ssh = getattr(self.driver, "over_ssh", None)
        try:
            if over_ssh is None:
                return fn(*args, **kwargs)
            answered = over_ssh(what, _answer, fn, *args, retry=read, **kwargs)
            if isinstance(answered, docker.errors.APIError):
                raise answered
            return answered
        except docker.errors.APIError as exc:
            if exc.is_client_error():
                raise DatabaseError(f"{what}: {exc.explanation or exc}", host=self.name) from None
            raise EngineError(f"{what}: {exc.explanation or exc}", host=self.name) from None
        except _LOST as exc:
            raise HostUnreachable(f"{what}: engine unreachable over SSH: {exc}", host=self.name) from None

    def _remove(self, container_id: str) -> None:
        try:
            self._call("remove the one-off container", self._api.remove_container, container_id, force=True)
        except (DatabaseError, EngineError, HostUnreachable):
            pass  # a leftover stopped container (labelled) is harmless; the run's verdict matters more

    def read_image_files(self, image: ImageRef, path: str) -> list[tuple[str, str]]:
        api = self._api
        where = f"{self.name}: migrations.path {path} in {image}"
        created = self._call(f"create a container of {image} to read {path}", api.create_container,
                             image.pull_ref, command=["true"], labels={LABEL_ROLE: "read"})
        try:
            def archive() -> bytes:
                try:
                    stream, _ = api.get_archive(created["Id"], path)
                except docker.errors.NotFound:
                    raise MigrationError([f"{where}: no such directory in the image; fix migrations.path "
                                          "or ship the files there"]) from None
                data = bytearray()
                for chunk in stream:  # read inside _call: the connection can fail mid-stream
                    data += chunk
                    if len(data) > MAX_FILES_BYTES:
                        raise MigrationError([f"{where}: more than {MAX_FILES_BYTES >> 20} MiB; "
                                              "is migrations.path the migrations directory?"])
                return bytes(data)

            data = self._call(f"read {path} from {image}", archive, read=True)
        finally:
            self._remove(created["Id"])
        return files_in_tar(data)

    def image_facts(self, image: ImageRef) -> ImageFacts:
        attrs = self._call(f"inspect image {image}", self._api.inspect_image, image.pull_ref, read=True)
        return facts_from_inspect(str(image), attrs)

    def run_one_off(self, image: ImageRef, argv: Sequence[str], *, env: Mapping[str, str], network: str | None,
                    labels: Mapping[str, str], timeout: float) -> tuple[int, str]:
        api = self._api
        what = f"run {' '.join(argv)} in a one-off container of {image}"
        host_config = api.create_host_config(network_mode=network)
        created = self._call(what, api.create_container, image.pull_ref, command=list(argv), environment=dict(env),
                             labels=dict(labels), host_config=host_config)
        try:
            self._call(what, api.start, created["Id"])
            try:
                code = self._call(what, _wait, api, created["Id"], timeout)
            except HostUnreachable as exc:
                # The container may still be running on the host: not a retry, a human.
                raise MigrationFailed(f"{what}: no exit seen ({exc}); it may be half-applied: check the "
                                      "database before the next deploy", host=self.name) from None
            logs = self._call(what, api.logs, created["Id"], tail=30, read=True)
            return code, logs.decode("utf-8", "replace").strip()
        finally:
            self._remove(created["Id"])

    def read_secret_file(self, path: str) -> str:
        return self.driver.read_secret_file(path)

    def open_tunnel(self, address: str, port: int):
        what = f"open a tunnel to the database at {address}:{port}"
        if hasattr(self.driver, "open_channel"):
            # The driver's: a lost connection is reopened for the next client connection.
            def opener(dest, src):
                return self.driver.open_channel("direct-tcpip", dest, src, what=what, timeout=10)
        else:
            transport = self.driver.conn.transport

            def opener(dest, src):
                return transport.open_channel("direct-tcpip", dest, src, timeout=10)
        return Tunnel(opener, address, port, host=self.name)


def _answer(fn, *args, **kwargs):
    """``fn``'s result, or the engine's error answer returned, not raised:
    docker-py's APIError is an OSError (through requests), and an engine
    that answered is no lost connection to reopen or retry."""
    try:
        return fn(*args, **kwargs)
    except docker.errors.APIError as exc:
        return exc


def _wait(api, container_id: str, timeout: float) -> int:
    try:
        code = api.wait(container_id, timeout=timeout).get("StatusCode")
    except requests.exceptions.Timeout:
        raise MigrationFailed(f"still running after {timeout:.0f}s; it may be half-applied: check the database "
                              "before the next deploy") from None
    return int(code if code is not None else -1)


def facts_from_inspect(reference: str, attrs: Mapping[str, Any]) -> ImageFacts:
    """ImageFacts from the engine's image inspection: the creation label wins
    (a reproducible build fixes the config's time but may label the real one)."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    if labels.get(CREATED_LABEL):
        return ImageFacts(reference, str(attrs.get("Id", "")), str(labels[CREATED_LABEL]), "label")
    return ImageFacts(reference, str(attrs.get("Id", "")), str(attrs.get("Created") or ""), "config")


def files_in_tar(data: bytes) -> list[tuple[str, str]]:
    """(name, text) of the regular files directly inside the archived directory."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            parts = member.name.strip("/").split("/")
            if member.isfile() and len(parts) == 2:
                handle = tar.extractfile(member)
                out.append((parts[1], handle.read().decode("utf-8") if handle else ""))
    return out


def tunnel_for(dsn: str, hosts, via_host: str) -> Tunnel:
    """A tunnel to the DSN's server through ``via_host``'s open connection."""
    driver = hosts.get(via_host)
    if driver is None:
        raise DatabaseError(f"database.via_host {via_host} is not one of the hosts opened for this run")
    params = conninfo_to_dict(dsn)
    address = params.get("host") or "127.0.0.1"
    if str(address).startswith("/"):
        raise DatabaseError(f"database.via_host needs a TCP address in the DSN, not the socket directory {address}")
    return database_host(driver).open_tunnel(str(address), int(params.get("port") or 5432))
