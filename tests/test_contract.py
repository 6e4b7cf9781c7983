"""Contract migrations on the real fleet: not before the soak time, not
without the flag, then run; afterwards a release older than the contract is
refused before any container or the schema changes."""

from __future__ import annotations

import time

import pytest

from reconciler.adapters import fleet as fleet_hosts
from reconciler.engine.contract import run_contracts
from reconciler.adapters.db import list_backups
from reconciler.engine.deploy import deploy_target
from tests.dbfleet import columns, create_database, drop_database, fingerprint, make_db_env_repo, migrating_image, sql, web
from tests.envrepo import containers, remove_containers, serving
from tests.test_dbphase_fleet import refused as refused_deploy

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

EXPAND = {"0001_add_title.expand.sql": "ALTER TABLE notes ADD COLUMN title text;\n"}
CONTRACT = {**EXPAND, "0002_drop_legacy.contract.sql": "ALTER TABLE notes DROP COLUMN legacy;\n"}
PORT = 18220


@pytest.fixture
def db_env(fleet, tmp_path, monkeypatch):
    name = "ccontract"
    dsn = create_database(fleet, f"rdb_{name}")
    sql(dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, legacy text)")
    sql(dsn, "INSERT INTO notes SELECT g, md5(g::text), 'old' FROM generate_series(1, 300) g")
    monkeypatch.setenv("RECONCILER_BACKUP_DIR", str(tmp_path / "backups"))
    repo = make_db_env_repo(tmp_path / "envrepo", fleet, name, dsn)
    repo.dsn, repo.store = dsn, tmp_path / "backups"
    yield repo
    remove_containers(fleet, f"{name}-")
    drop_database(fleet, f"rdb_{name}")


def deploy(repo):
    return deploy_target(repo.target(), report_progress=lambda *a, **k: None)


def contracts(repo, healthy_since: float, now: float):
    target = repo.target()
    hosts = fleet_hosts.open_hosts(target.environment.hosts, identity_file=target.identity_file,
                                   known_hosts_file=target.known_hosts_file)
    try:
        (result,) = run_contracts(target.environment, hosts, target.revision, healthy_since=healthy_since, now=now)
        return result
    finally:
        fleet_hosts.close_hosts(hosts)


def test_contract_waits_for_flag_and_soak_then_runs_and_blocks_older_releases(fleet, db_env):
    v1 = migrating_image(fleet, EXPAND, version="v1")
    v2 = migrating_image(fleet, CONTRACT, version="v2")
    db_env.commit(web(v1, PORT))
    assert deploy(db_env).outcome.result == "deployed"
    db_env.commit(web(v2, PORT, migrations="{path: /migrations, soak: 1h}"), message="v2 no longer reads legacy")
    assert deploy(db_env).outcome.result == "deployed"
    assert "legacy" in columns(db_env.dsn, "notes")  # a deploy never runs a contract
    deployed_at = time.time()

    # Without the flag: not even after a day.
    refused = contracts(db_env, deployed_at, deployed_at + 86400)
    assert (refused.state, refused.applied) == ("not-allowed", ())
    assert "legacy" in columns(db_env.dsn, "notes")

    db_env.commit(web(v2, PORT, migrations="{path: /migrations, allow_contract: true, soak: 1h}"), message="allow contract")
    # The flag is not part of the container's shape: the same release keeps running, its soak goes on.
    assert deploy(db_env).plan.in_sync
    healthy_since = deployed_at
    early = contracts(db_env, healthy_since, healthy_since + 600)
    assert early.state == "waiting" and 2990 <= early.wait_seconds <= 3000, early
    assert "legacy" in columns(db_env.dsn, "notes")

    ran = contracts(db_env, healthy_since, healthy_since + 3601)
    assert (ran.state, ran.applied) == ("ran", ("0002_drop_legacy.contract.sql",))
    assert "legacy" not in columns(db_env.dsn, "notes")
    assert ran.backup and any(str(b.path) == ran.backup for b in list_backups(db_env.store))
    assert contracts(db_env, healthy_since, healthy_since + 7200).state == "nothing-pending"

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
