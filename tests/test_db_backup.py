"""Pre-deploy backups against a real PostgreSQL: taken, verified, refused when bad."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import psycopg
import pytest

from reconciler.adapters.db import Backup, BackupFailed, backup, list_backups, prune_backups, verify
from reconciler.adapters.db.testing import can_run_cluster, scratch_cluster
from reconciler.errors import StalledError

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(not can_run_cluster(), reason="needs root and PostgreSQL server binaries"),
]

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def dsn() -> str:
    with scratch_cluster() as (dsn, _):
        with psycopg.connect(dsn) as conn:
            # Hashes compress poorly, so the dump is a few megabytes: enough to fill a tiny disk.
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO items SELECT g, md5(g::text) || md5((g * 7)::text) "
                         "FROM generate_series(1, 60000) g")
        yield dsn


def test_backup_exists_verifies_and_sidecar_is_right(dsn: str, tmp_path: pathlib.Path) -> None:
    item = backup(dsn, tmp_path, commit=COMMIT, environment="staging")
    assert item.path.parent == tmp_path / "demo"
    assert item.path.name.endswith(f"_{COMMIT[:12]}_pre-deploy.dump")
    assert item.path.stat().st_size == item.size > 100_000
    side = json.loads(item.sidecar.read_text())
    assert side["commit"] == COMMIT and side["environment"] == "staging"
    assert side["size"] == item.size and len(side["sha256"]) == 64
    assert side["server_version"].startswith("15") and side["duration"] >= 0 and side["created"]
    verify(item)
    assert list_backups(tmp_path) == (item,) == list_backups(tmp_path, "demo")
    assert Backup.load(item.sidecar) == item
    assert not [p for p in item.path.parent.iterdir() if p.name.endswith(".partial")]


def test_truncated_backup_fails_verify(dsn: str, tmp_path: pathlib.Path) -> None:
    item = backup(dsn, tmp_path, commit=COMMIT, environment="staging")
    with open(item.path, "r+b") as handle:
        handle.truncate(item.size // 2)
    with pytest.raises(BackupFailed, match="does not match its sidecar"):
        verify(item)


def test_truncated_archive_with_matching_hash_fails_pg_restore(dsn: str, tmp_path: pathlib.Path) -> None:
    # As if pg_dump had been cut short before the hash was taken: only a full read catches it.
    item = backup(dsn, tmp_path, commit=COMMIT, environment="staging")
    with open(item.path, "r+b") as handle:
        handle.truncate(item.size // 2)
    import hashlib
    data = item.path.read_bytes()
    forged = Backup(**{**item.__dict__, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    listed = subprocess.run(["pg_restore", "-l", str(item.path)], capture_output=True)
    assert listed.returncode == 0  # the trap the issue warns about
    with pytest.raises(BackupFailed, match="does not restore"):
        verify(forged)


def test_full_backup_disk_fails_cleanly(dsn: str, tmp_path: pathlib.Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(store)], check=True)
    try:
        with pytest.raises(BackupFailed, match="No space left on device") as caught:
            backup(dsn, store, commit=COMMIT, environment="staging")
        assert isinstance(caught.value, StalledError)
        assert list(os.walk(store)) == [(str(store), ["demo"], []), (str(store / "demo"), [], [])]
        assert list_backups(store) == ()
    finally:
        subprocess.run(["umount", str(store)], check=True)


def test_failing_pg_dump_fails_cleanly(dsn: str, tmp_path: pathlib.Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A pg_dump that dies after writing part of the archive, as on a lost connection.
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\nhead -c 300000 /dev/urandom\n"
                    "echo 'pg_dump: error: connection to server lost' >&2\nexit 1\n")
    fake.chmod(0o755)
    import reconciler.adapters.db.backups as module
    real_tool = module.tool
    monkeypatch.setattr(module, "tool", lambda name: str(fake) if name == "pg_dump" else real_tool(name))
    store = tmp_path / "store"
    with pytest.raises(BackupFailed, match=r"pg_dump .* failed \(exit 1\): .*connection to server lost"):
        backup(dsn, store, commit=COMMIT, environment="staging")
    assert list((store / "demo").iterdir()) == []


def test_unreachable_database_fails_with_cause(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BackupFailed, match="cannot reach the database"):
        backup("postgresql://x:y@127.0.0.1:1/demo?connect_timeout=2", tmp_path,
               commit=COMMIT, environment="staging")


def test_prune_keeps_the_newest(dsn: str, tmp_path: pathlib.Path) -> None:
    made = [backup(dsn, tmp_path, commit=f"{i:040x}", environment="staging") for i in range(3)]
    removed = prune_backups(tmp_path, keep=2)
    assert removed == (made[0],)
    assert list_backups(tmp_path) == tuple(made[1:])
    assert not made[0].path.exists() and not made[0].sidecar.exists()
    with pytest.raises(ValueError):
        prune_backups(tmp_path, keep=0)
