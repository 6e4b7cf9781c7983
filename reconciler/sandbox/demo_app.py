"""The demo's app: three releases that ship their SQL migrations, and the
sandbox-side reset a second ``reconciler demo`` needs.

Each release is the sandbox's busybox demo image (``images.build_image``)
with a third layer holding ``/migrations``, so the agent reads the files from
the image exactly as it does for a real application:

- release 1 creates the app's table (``notes``) and its first rows;
- release 2 adds a nullable column (``tag``): an expand migration, which the
  release before it keeps working against;
- release 3 ships the same files but never answers ``/health`` with 200
  (mode ``unhealthy``): the agent rolls it back and reverts its commit.

Built the way ``images`` builds the stock variants (no ``docker build``, fixed
bytes, pushed by digest), so a second demo re-pushes nothing.  The images
live in their own repository (``demo/app``) beside the stock ``demo/web``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from reconciler.sandbox import images

REPOSITORY = "demo/app"
TABLE = "notes"

CREATE_NOTES = """\
-- Release 1: the app's table and its first rows.
CREATE TABLE notes (
    id serial PRIMARY KEY,
    body text NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
INSERT INTO notes (body) VALUES ('first note'), ('second note'), ('third note');
"""

ADD_TAG = """\
-- Release 2: a nullable column.  Release 1 never names it, so it keeps
-- working against the expanded table (and after a container rollback).
ALTER TABLE notes ADD COLUMN tag text;
"""

MIGRATIONS_PATH = "/migrations"
ADDED_COLUMN = "tag"


@dataclass(frozen=True)
class Release:
    number: int
    variant: images.Variant  # version and /health behaviour
    migrations: tuple[tuple[str, str], ...]  # (file name, SQL), in order
    story: str  # what the demo says about it

    @property
    def tag(self) -> str:
        return self.variant.tag


RELEASES = (
    Release(1, images.Variant("1", "v1", "healthy"), (("0001_create_notes.expand.sql", CREATE_NOTES),),
            "release 1: the app and its table"),
    Release(2, images.Variant("2", "v2", "healthy"),
            (("0001_create_notes.expand.sql", CREATE_NOTES), ("0002_add_tag.expand.sql", ADD_TAG)),
            "release 2: an expand migration (ADD COLUMN tag)"),
    Release(3, images.Variant("3-never-healthy", "v3", "unhealthy"),
            (("0001_create_notes.expand.sql", CREATE_NOTES), ("0002_add_tag.expand.sql", ADD_TAG)),
            "release 3: never turns healthy"),
)


def migrations_layer(release: Release) -> bytes:
    entries = [(MIGRATIONS_PATH.lstrip("/"), "dir", b"", 0o755)]
    entries += [(f"{MIGRATIONS_PATH.lstrip('/')}/{name}", "file", sql, 0o644) for name, sql in release.migrations]
    return images._tar(entries)


def build_release(release: Release, base_tar: bytes, arch: str, base_gz: bytes | None = None) -> images.BuiltImage:
    """The release's image: the stock variant plus the migrations layer.  Pure."""
    stock = images.build_image(release.variant, base_tar, arch, base_gz)
    extra = migrations_layer(release)
    config = json.loads(stock.config.data)
    config["rootfs"]["diff_ids"].append(images.sha256_digest(extra))
    config["history"].append({"created": images.CREATED, "created_by": f"reconciler demo: {MIGRATIONS_PATH}"})
    config["config"]["Labels"]["org.opencontainers.image.title"] = "demo-app"
    config_blob = images.Blob(images.CONFIG_TYPE, images._canonical_json(config))
    layers = (*stock.layers, images.Blob(images.LAYER_TYPE, images._gzip(extra)))
    manifest = images._canonical_json({"schemaVersion": 2, "mediaType": images.MANIFEST_TYPE,
                                       "config": config_blob.descriptor(),
                                       "layers": [layer.descriptor() for layer in layers]})
    return images.BuiltImage(release.variant, config_blob, layers, manifest)


def push_releases(registry: str) -> dict[int, str]:
    """Build and push every release; ``{number: "registry/demo/app:tag@sha256:..."}``."""
    if not images.BUSYBOX.exists():
        from reconciler.errors import SandboxError

        raise SandboxError(f"demo: {images.BUSYBOX} is missing; install busybox-static (scripts/setup-system.sh)")
    base = images.base_layer_tar(images.BUSYBOX.read_bytes(), (images._SCRIPTS / "entrypoint.sh").read_text(),
                                 (images._SCRIPTS / "demo-handler").read_text())
    base_gz = images._gzip(base)
    arch = images.docker_arch()
    refs = {}
    for release in RELEASES:
        built = build_release(release, base, arch, base_gz)
        digest = images.push_image(registry, REPOSITORY, built)
        refs[release.number] = f"{registry}/{REPOSITORY}:{release.tag}@{digest}"
    return refs


# ---------------------------------------------------------------- a fresh start for a second demo


def reset_database(admin_dsn: str, name: str) -> str:
    """Drop and create the demo's database on the sandbox server; its DSN.

    The story starts from no table every time (release 1 creates it), so a
    second demo shows the same migrations applied, not "nothing pending".
    """
    import psycopg
    from psycopg import sql

    from reconciler.adapters.db.connection import with_database

    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_dsn, name)


def remove_environment_containers(sandbox, environment: str) -> int:
    """Remove every container reconciler made for ``environment`` on the
    sandbox hosts (found by its label), through each engine's local socket:
    a reset of the sandbox, not a deploy, so it does not go through the
    product.  Returns how many were removed."""
    import docker

    from reconciler.core.managed import LABEL_ENVIRONMENT

    removed = 0
    for host in sandbox.hosts:
        client = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41", timeout=60)
        try:
            for container in client.containers.list(all=True, filters={"label": f"{LABEL_ENVIRONMENT}={environment}"}):
                container.remove(force=True)
                removed += 1
        finally:
            client.close()
    return removed


def provision_secret_files(environment) -> list[str]:
    """Create the host-side files the environment's secrets name, if absent,
    readable by each host's SSH user; returns ``host:path`` of those made.

    On real hosts this is the operator's job, as root (the repository only
    names the file, and the deploy user may not write under /etc).  The
    sandbox's hosts are network namespaces of this machine that share its
    filesystem and its users, so the demo plays the operator here: one file
    serves every host.  An existing file keeps its content; its owner and
    mode are set so that the deploy user can read it and nobody else.
    """
    import grp
    import os
    import pwd
    import secrets
    from pathlib import Path

    made = []
    for service in environment.services:
        for secret in service.secrets:
            if not secret.file:
                continue
            path = Path(secret.file)
            for host_name in service.hosts:
                user = pwd.getpwnam(environment.host(host_name).user)
                group = grp.getgrgid(user.pw_gid).gr_gid
                path.parent.mkdir(parents=True, exist_ok=True)
                os.chown(path.parent, 0, group)
                path.parent.chmod(0o750)
                if not path.exists():
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                    with os.fdopen(fd, "w") as fh:
                        fh.write(secrets.token_urlsafe(32))
                    made.append(f"{host_name}:{path}")
                os.chown(path, 0, group)
                path.chmod(0o640)
    return made
