"""Contract migrations on the real fleet, through the engine as the agent
runs them (a reconcile that finds the release in sync gives its contracts
their turn), with the engine's clock set ahead instead of waiting: not
before the soak time, not without the flag, then run and recorded;
afterwards a release older than the contract is refused before any container
or the schema changes."""

from __future__ import annotations

import time

import pytest

from reconciler.adapters.db import list_backups
from tests.dbfleet import columns, database_env, fingerprint, last_attempt, migrating_image, reconcile_at, web
from tests.envrepo import containers, deploy, serving
from tests.test_dbphase_fleet import refused as refused_deploy

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

EXPAND = {"0001_add_title.expand.sql": "ALTER TABLE notes ADD COLUMN title text;\n"}
CONTRACT = {**EXPAND, "0002_drop_legacy.contract.sql": "ALTER TABLE notes DROP COLUMN legacy;\n"}
PORT = 18220


@pytest.fixture
def db_env(fleet, tmp_path, monkeypatch):
    with database_env(fleet, tmp_path, monkeypatch, "ccontract",
                      "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, legacy text)",
                      "INSERT INTO notes SELECT g, md5(g::text), 'old' FROM generate_series(1, 300) g") as repo:
        yield repo


def test_contract_waits_for_flag_and_soak_then_runs_and_blocks_older_releases(fleet, db_env):
    v1 = migrating_image(fleet, EXPAND, version="v1")
    v2 = migrating_image(fleet, CONTRACT, version="v2")
    db_env.commit(web(v1, PORT))
    assert deploy(db_env).outcome.result == "deployed"
    db_env.commit(web(v2, PORT, migrations="{path: /migrations, soak: 1h}"), message="v2 no longer reads legacy")
    assert deploy(db_env).outcome.result == "deployed"
    assert "legacy" in columns(db_env.dsn, "notes")  # a deploy never runs a contract
    deployed_at = time.time()

    # Without the flag: not even after a day, and nothing to come back for.
    refused = reconcile_at(db_env, deployed_at + 86400)
    assert (refused.result, refused.requeue_after) == ("in-sync", None)
    assert "legacy" in columns(db_env.dsn, "notes")

    db_env.commit(web(v2, PORT, migrations="{path: /migrations, allow_contract: true, soak: 1h}"), message="allow contract")
    # The flag is not part of the container's shape: the same release keeps running, its soak goes on.
    assert deploy(db_env).plan.in_sync
    early = reconcile_at(db_env, deployed_at + 600)
    assert early.result == "in-sync" and 2990 <= early.requeue_after <= 3000, early  # back when the soak ends
    assert "legacy" in columns(db_env.dsn, "notes")

    ran = reconcile_at(db_env, deployed_at + 3601)
    assert (ran.result, ran.plan.in_sync) == ("contracted", False), ran
    database = last_attempt(db_env, ran.commit).details["database"]
    assert database["migrations"] == ["0002_drop_legacy.contract.sql"]
    assert "legacy" not in columns(db_env.dsn, "notes")
    assert any(str(b.path) == database["backup"] for b in list_backups(db_env.store))
    after = reconcile_at(db_env, deployed_at + 7200)
    assert (after.result, after.requeue_after) == ("in-sync", None)  # nothing pending, nothing to wait for

    # A release older than the contract: refused before anything changes.
    before = (containers(fleet, db_env.env), columns(db_env.dsn, "notes"), fingerprint(db_env.dsn))
    db_env.commit(web(v1, PORT), message="roll back to v1")
    reason, message = refused_deploy(db_env)
    assert reason == "ContractRollbackRefused"
    assert "0002_drop_legacy.contract.sql" in message and "older than that contract" in message
    assert "reconciler db restore" in message
    assert (containers(fleet, db_env.env), columns(db_env.dsn, "notes"), fingerprint(db_env.dsn)) == before
    assert serving(fleet, PORT) == {h.name: "demo-web v2" for h in fleet.hosts}

    # The emergency lever too: v1's retained containers may not come back.
    from reconciler.cli.main import main

    argv = ["rollback", "--repo", str(db_env.path), "--env", db_env.env, "--identity", db_env.identity, "--yes"]
    assert main(argv) == 1
    assert (containers(fleet, db_env.env), columns(db_env.dsn, "notes")) == before[:2]
    assert serving(fleet, PORT) == {h.name: "demo-web v2" for h in fleet.hosts}
