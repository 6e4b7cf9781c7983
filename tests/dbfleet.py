"""Fleet helpers for the database tests: images that ship migrations, a
database of their own on the sandbox's PostgreSQL, and environment
repositories that declare it.

Images are built the way the sandbox builds the demo images (no docker
build, reproducible, pushed by digest) with a third layer holding
``/migrations``; the tag is derived from the content, so tests running at the
same time never overwrite each other's images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pygit2
from psycopg import sql as pgsql

from reconciler.adapters.db.connection import with_database
from reconciler.sandbox import images
from tests.envrepo import EnvRepo, remove_containers

REPOSITORY = "demo/web-migrating"


def migrating_image(fleet, files: dict[str, str], *, version: str = "v2", mode: str = "healthy") -> str:
    """Push a demo image whose layer holds ``/migrations/<name>`` for each file;
    return ``registry/repo:tag@sha256:...``."""
    base = images.base_layer_tar(images.BUSYBOX.read_bytes(), (images._SCRIPTS / "entrypoint.sh").read_text(),
                                 (images._SCRIPTS / "demo-handler").read_text())
    entries = [("migrations", "dir", b"", 0o755)]
    entries += [(f"migrations/{name}", "file", text, 0o644) for name, text in sorted(files.items())]
    extra = images._tar(entries)
    digest = hashlib.sha256(extra + version.encode() + mode.encode()).hexdigest()[:12]
    variant = images.Variant(f"{version}-{mode}-{digest}", version, mode)
    built = images.build_image(variant, base, images.docker_arch())
    layers = (*built.layers, images.Blob(images.LAYER_TYPE, images._gzip(extra)))
    config = json.loads(built.config.data)
    config["rootfs"]["diff_ids"].append(images.sha256_digest(extra))
    config["history"].append({"created": images.CREATED, "created_by": "tests: migrations"})
    config_blob = images.Blob(images.CONFIG_TYPE, images._canonical_json(config))
    manifest = images._canonical_json({"schemaVersion": 2, "mediaType": images.MANIFEST_TYPE,
                                       "config": config_blob.descriptor(),
                                       "layers": [layer.descriptor() for layer in layers]})
    image = images.BuiltImage(variant, config_blob, layers, manifest)
    pushed = images.push_image(fleet.registry, REPOSITORY, image)
    return f"{fleet.registry}/{REPOSITORY}:{variant.tag}@{pushed}"


def create_database(fleet, name: str) -> str:
    """A fresh database of its own on the sandbox server; its DSN."""
    with psycopg.connect(fleet.database_dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    return with_database(fleet.database_dsn, name)


def drop_database(fleet, name: str) -> None:
    with psycopg.connect(fleet.database_dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))


def sql(dsn: str, query: str, *params):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else None


def columns(dsn: str, table: str) -> dict[str, tuple[str, str]]:
    rows = sql(dsn, "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                    "WHERE table_name = %s", table)
    return {r[0]: (r[1], r[2]) for r in rows}


def fingerprint(dsn: str, table: str = "notes", cols: str = "id, body") -> tuple[int, str]:
    """Row count and a checksum of the rows' original columns, in key order
    (an added column must not change it)."""
    return tuple(sql(dsn, f"SELECT count(*), md5(coalesce(string_agg(row({cols})::text, '|' ORDER BY id), '')) "
                          f"FROM {table}")[0])


@dataclass
class DbEnvRepo(EnvRepo):
    dsn_file: Path = None  # type: ignore[assignment]
    backup: str = "always"

    def blocks(self) -> str:
        return f"database:\n  dsn_file: {self.dsn_file}\n  backup: {self.backup}\n"


def make_db_env_repo(root: Path, sandbox, env: str, dsn: str) -> DbEnvRepo:
    env_dir = root / "environments" / env
    env_dir.mkdir(parents=True)
    (env_dir / "known_hosts").write_text(Path(sandbox.known_hosts_file).read_text())
    pygit2.init_repository(str(root), initial_head="main")
    dsn_file = root.parent / f"{env}.dsn"  # outside the repository, as for users
    dsn_file.write_text(dsn + "\n")
    dsn_file.chmod(0o600)
    return DbEnvRepo(root, env, sandbox, dsn_file=dsn_file)


@contextlib.contextmanager
def database_env(fleet, tmp_path: Path, monkeypatch, name: str, *statements: str):
    """An environment ``name`` whose database is a fresh ``rdb_<name>`` on
    the sandbox's server, set up with ``statements``, backups under
    ``tmp_path/backups``; its containers and database removed after."""
    dsn = create_database(fleet, f"rdb_{name}")
    try:
        for statement in statements:
            sql(dsn, statement)
        store = tmp_path / "backups"
        store.mkdir(exist_ok=True)
        monkeypatch.setenv("RECONCILER_BACKUP_DIR", str(store))
        repo = make_db_env_repo(tmp_path / "envrepo", fleet, name, dsn)
        repo.dsn, repo.store = dsn, store
        yield repo
    finally:
        remove_containers(fleet, f"{name}-")
        drop_database(fleet, f"rdb_{name}")


def reconcile_at(repo: EnvRepo, now: float):
    """The agent's run of the repository's head with the engine's clock at
    ``now``: a release in sync gives its contracts their turn, as when the
    agent comes back at the end of a soak."""
    from reconciler.adapters import fleet as hosts
    from reconciler.engine.deploy import fleet_git_dir
    from reconciler.engine.run import Context, fleet_opener, reconcile

    target = repo.target()
    gitdir = Path(fleet_git_dir(target.repo))
    ctx = Context(repo=gitdir, state_dir=gitdir / "reconciler", open_hosts=fleet_opener(target.identity_file),
                  close_hosts=hosts.close_hosts, clock=lambda: now)
    return reconcile(ctx, repo.env, commit=target.revision, reason="test")


def last_attempt(repo: EnvRepo, commit: str):
    """The newest attempt the note on ``commit`` records."""
    from reconciler.adapters import gitlog
    from reconciler.engine.deploy import fleet_git_dir

    return gitlog.attempts(pygit2.Repository(fleet_git_dir(repo.path)), commit, repo.env)[-1]


def web(image: str, port: int, *, migrations: str = "{path: /migrations}", hosts: str = "all") -> str:
    return f"""
    web:
      image: {image}
      hosts: {hosts}
      ports: ["{port}:8080"]
      health: {{type: http, path: /health, interval: 500ms, successes: 2, deadline: 8s}}
      stop_timeout: 2s
      migrations: {migrations}
    """
