"""No verified backup, no migration and no deploy: a truncated dump and a full
backup disk each stop the deploy on the real fleet before the schema or any
container changes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess

import pytest

from reconciler.engine import dbphase
from reconciler.adapters.db import list_backups
from tests.dbfleet import columns, database_env, fingerprint, migrating_image, sql, web
from tests.envrepo import containers, deploy, serving

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ADD_TAG = {"0001_add_tag.expand.sql": "ALTER TABLE notes ADD COLUMN tag text;\n"}


@pytest.fixture
def db_env(fleet, tmp_path, request, monkeypatch):
    name = "b" + "".join(c for c in request.node.name.replace("test_", "") if c.isalnum())[:10].lower()
    # Hashes compress poorly: a dump of a few megabytes, enough to fill a tiny disk.
    with database_env(fleet, tmp_path, monkeypatch, name, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)",
                      "INSERT INTO notes SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 60000) g") as repo:
        yield repo


def refused(repo) -> tuple[str, str]:
    from tests.test_dbphase_fleet import refused as refused_by_the_engine

    return refused_by_the_engine(repo)


def _prepare(fleet, db_env, port):
    db_env.commit(web(migrating_image(fleet, {}, version="v1"), port))
    assert deploy(db_env).outcome.result == "deployed"
    db_env.commit(web(migrating_image(fleet, ADD_TAG, version="v2"), port), message="web v2 + tag")
    return containers(fleet, db_env.env), columns(db_env.dsn, "notes"), fingerprint(db_env.dsn)


def _unchanged(fleet, db_env, port, before):
    assert (containers(fleet, db_env.env), columns(db_env.dsn, "notes"), fingerprint(db_env.dsn)) == before
    assert "tag" not in before[1]
    assert serving(fleet, port) == {h.name: "demo-web v1" for h in fleet.hosts}


def test_truncated_backup_stops_the_deploy_before_any_migration(fleet, db_env, monkeypatch):
    real_backup = dbphase.backup

    def cut_short(*args, **kwargs):
        # As if pg_dump died mid-stream and the hash was taken of what arrived:
        # the sidecar matches the file, only a full restore can tell.
        item = real_backup(*args, **kwargs)
        data = item.path.read_bytes()[: item.size // 2]
        item.path.write_bytes(data)
        item = dataclasses.replace(item, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        side = json.loads(item.sidecar.read_text())
        side.update(size=item.size, sha256=item.sha256)
        item.sidecar.write_text(json.dumps(side))
        return item

    before = _prepare(fleet, db_env, 18210)
    monkeypatch.setattr(dbphase, "backup", cut_short)

    reason, message = refused(db_env)

    assert reason == "BackupFailed" and "does not restore" in message
    _unchanged(fleet, db_env, 18210, before)
    assert sql(db_env.dsn, "SELECT to_regclass('reconciler_migrations')") == [(None,)]
    # The bad dump is not offered for a restore later.
    assert all(b.size > 0 and b.commit != db_env.target().revision for b in list_backups(db_env.store))


def test_full_backup_disk_stops_the_deploy_before_any_migration(fleet, db_env):
    before = _prepare(fleet, db_env, 18211)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(db_env.store)], check=True)
    try:
        reason, message = refused(db_env)
        assert reason == "BackupFailed" and "No space left on device" in message
        assert not [p for p in db_env.store.rglob("*") if p.is_file()]  # no partial file left
    finally:
        subprocess.run(["umount", str(db_env.store)], check=True)
    _unchanged(fleet, db_env, 18211, before)


def test_a_retry_of_the_same_commit_reuses_its_verified_backup(fleet, db_env):
    """One backup per commit: the retry finds the migration it applied itself
    and nothing else since, so the dump taken before it is still the way back."""
    port = 18212
    db_env.commit(web(migrating_image(fleet, {}, version="v1"), port), policy="on_failure: note")
    assert deploy(db_env).outcome.result == "deployed"
    bad = db_env.commit(web(migrating_image(fleet, ADD_TAG, version="v3", mode="unhealthy"), port),
                        policy="on_failure: note", message="v3 + tag, never healthy")

    first = deploy(db_env)
    assert first.outcome is not None and first.outcome.result == "rolled-back", (first.result.reason, first.result.message)
    assert "tag" in columns(db_env.dsn, "notes")  # the expand ran; only the containers went back
    (taken,) = [b for b in list_backups(db_env.store) if b.commit == bad]

    again = deploy(db_env)  # the same commit once more (as the agent retries, or a human re-applies)

    assert again.outcome.result == "rolled-back"
    assert [b.path for b in list_backups(db_env.store) if b.commit == bad] == [taken.path]
    assert serving(fleet, port) == {h.name: "demo-web v1" for h in fleet.hosts}
