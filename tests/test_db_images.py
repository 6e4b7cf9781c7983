"""The database phase's Engine-API adapter (``EngineDatabaseHost``) on a
stand-in docker client: what each engine answer and each lost connection
becomes."""

from __future__ import annotations

import io
import tarfile

import docker.errors
import pytest
import requests

from reconciler.adapters.db.connection import DatabaseError
from reconciler.adapters.db.images import EngineDatabaseHost, facts_from_inspect, files_in_tar
from reconciler.core.migrations import MigrationError
from reconciler.core.model import ImageRef
from reconciler.errors import EngineError, HostUnreachable

IMAGE = ImageRef.parse("registry.test/web:v2")


def api_error(status: int, cls=docker.errors.APIError):
    response = requests.Response()
    response.status_code = status
    return cls(f"{status}", response=response, explanation=f"engine says {status}")


def tar_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        directory = tarfile.TarInfo("migrations")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, text in files.items():
            info = tarfile.TarInfo(f"migrations/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


class Api:
    def __init__(self, **behaviour) -> None:
        self.behaviour = behaviour
        self.removed: list[str] = []

    def _do(self, name, default):
        found = self.behaviour.get(name, default)
        if isinstance(found, BaseException):
            raise found
        return found

    def create_container(self, *args, **kwargs):
        return self._do("create_container", {"Id": "c1"})

    def get_archive(self, cid, path):
        return self._do("get_archive", (iter([tar_of({"0001_a.expand.sql": "SELECT 1;"})]), {}))

    def inspect_image(self, ref):
        return self._do("inspect_image", {"Id": "sha256:cfg", "Created": "2026-01-01T00:00:00.5Z"})

    def remove_container(self, cid, force=False):
        self.removed.append(cid)


class Driver:
    """Like DockerHost where it matters here: ``over_ssh`` takes any OSError
    for a lost connection (requests' errors, docker-py's APIError among them)."""

    name = "h1"

    def __init__(self, api: Api) -> None:
        self.engine = type("Engine", (), {"api": api})()
        self.retried: list[bool] = []

    def over_ssh(self, what, fn, *args, retry=False, **kwargs):
        self.retried.append(retry)
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise HostUnreachable(f"{what}: SSH connection failed: {exc}", host=self.name) from None


def test_the_files_come_out_of_a_created_container_that_is_removed_again():
    api = Api()
    driver = Driver(api)
    assert EngineDatabaseHost(driver).read_image_files(IMAGE, "/migrations") == [("0001_a.expand.sql", "SELECT 1;")]
    assert api.removed == ["c1"] and driver.retried == [False, True, False]  # create, read (retried), remove


def test_no_such_directory_is_the_images_fault_named_with_host_and_path():
    api = Api(get_archive=api_error(404, docker.errors.NotFound))
    with pytest.raises(MigrationError) as raised:
        EngineDatabaseHost(Driver(api)).read_image_files(IMAGE, "/migrations")
    assert str(raised.value).startswith(f"h1: migrations.path /migrations in {IMAGE}: no such directory in the image")
    assert api.removed == ["c1"]


@pytest.mark.parametrize("error, kind", [
    (api_error(404, docker.errors.NotFound), DatabaseError),
    (api_error(500), EngineError),
    (requests.exceptions.ConnectionError("Socket is closed"), HostUnreachable),
], ids=["engine-404-is-stalled", "engine-500-is-transient", "lost-connection-is-transient"])
def test_an_engine_answer_is_not_a_lost_connection(error, kind):
    with pytest.raises(kind) as raised:
        EngineDatabaseHost(Driver(Api(inspect_image=error))).image_facts(IMAGE)
    assert raised.value.host == "h1" and f"inspect image {IMAGE}" in str(raised.value)


def test_image_facts_prefer_the_creation_label_of_a_reproducible_build():
    attrs = {"Id": "sha256:cfg", "Created": "1970-01-01T00:00:00Z",
             "Config": {"Labels": {"org.opencontainers.image.created": "2026-05-01T12:00:00Z"}}}
    facts = facts_from_inspect("web:v2", attrs)
    assert (facts.id, facts.created, facts.created_from) == ("sha256:cfg", "2026-05-01T12:00:00Z", "label")
    assert facts_from_inspect("web:v2", {"Id": "x", "Created": "2026-01-01T00:00:00Z"}).created_from == "config"


def test_only_files_directly_in_the_directory_are_read():
    assert files_in_tar(tar_of({"0001_a.expand.sql": "A", "README": "r"})) == [("0001_a.expand.sql", "A"), ("README", "r")]
