"""reconciler db on a real PostgreSQL (the sandbox's server): list, restore
round trip recorded in git, drill."""

from __future__ import annotations

import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from reconciler.adapters.db import list_backups
from reconciler.engine.dbphase import take_verified_backup
from tests.dbfleet import create_database, drop_database, fingerprint, make_db_env_repo, sql

pytestmark = [pytest.mark.fleet]

SERVICES = """
web:
  image: 10.213.0.1:5000/demo/web:v1@sha256:{zeros}
  hosts: all
""".replace("{zeros}", "0" * 64)


@pytest.fixture
def db_env(fleet, tmp_path):
    name = "rcli"
    dsn = create_database(fleet, f"rdb_{name}")
    sql(dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
    sql(dsn, "INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 100) g")
    repo = make_db_env_repo(tmp_path / "envrepo", fleet, name, dsn)
    repo.dsn, repo.store = dsn, tmp_path / "backups"
    repo.commit_id = repo.commit(SERVICES)
    yield repo
    drop_database(fleet, f"rdb_{name}")


def db(repo, *argv):
    return main(["db", *argv, "--store", str(repo.store)] +
                (["--env", repo.env, "--repo", str(repo.path)] if argv[0] != "backups" else []))


def test_restore_round_trip_is_recorded_and_reversible(db_env, capsys):
    environment = db_env.target().environment
    taken = take_verified_backup(db_env.dsn, environment, db_env.commit_id, db_env.store)
    at_backup = fingerprint(db_env.dsn)
    sql(db_env.dsn, "INSERT INTO notes SELECT g, 'after the backup' FROM generate_series(101, 150) g")
    sql(db_env.dsn, "DELETE FROM notes WHERE id <= 10")
    assert fingerprint(db_env.dsn)[0] == 140

    assert main(["db", "backups", "--env", db_env.env, "--store", str(db_env.store)]) == 0
    assert taken.backup in capsys.readouterr().out

    assert db(db_env, "restore", taken.backup) == 1  # not a terminal and no --yes: refused, unchanged
    assert fingerprint(db_env.dsn)[0] == 140
    assert db(db_env, "restore", taken.backup.rsplit("/", 1)[1], "--yes") == 0
    out = capsys.readouterr().out
    assert "fresh backup" in out and "restored" in out and "recorded in git" in out

    assert fingerprint(db_env.dsn) == at_backup  # rows before are back, rows after are gone
    assert sql(db_env.dsn, "SELECT count(*) FROM notes WHERE id > 100") == [(0,)]
    # Through the engine: an attempt of its own on the commit, with who asked.
    (restore,) = [a for a in gitlog.attempts(gitlog.open_repo(db_env.path), db_env.commit_id, db_env.env)
                  if a.operation == "restore"]
    assert (restore.result, restore.trigger) == ("restored", "cli")
    database = restore.details["database"]
    assert database["restore"]["backup"] == taken.backup and database["backup"] != taken.backup
    # The fresh backup holds what the restore replaced: the restore can be undone.
    fresh = [b for b in list_backups(db_env.store) if str(b.path) == database["backup"]]
    assert len(fresh) == 1
    assert db(db_env, "restore", database["backup"], "--yes") == 0
    assert fingerprint(db_env.dsn)[0] == 140


def test_drill_restores_the_newest_backup_into_a_scratch_database(db_env, capsys):
    environment = db_env.target().environment
    take_verified_backup(db_env.dsn, environment, db_env.commit_id, db_env.store)
    assert db(db_env, "drill") == 0
    out = capsys.readouterr().out
    assert "drill: restored" in out and "recovery time" in out
    leftovers = sql(db_env.dsn, "SELECT datname FROM pg_database WHERE datname LIKE 'reconciler_drill_%'")
    assert leftovers == []


def test_restore_of_an_unknown_backup_says_how_to_list_them(db_env, capsys):
    assert db(db_env, "restore", "nope.dump", "--yes") == 1
    assert "reconciler db backups" in capsys.readouterr().err
