"""A release older than a contract its migration COMMAND ran (a Django-style
app: ``migrations.command``, no files reconciler can read) is refused on the
real fleet before any container starts, for a deploy and for the rollback
lever; a release built after it deploys.

Before, only ``migrations.path`` services were checked: the older image was
started on the first host and only its health check caught it.
"""

from __future__ import annotations

import json
import time

import pytest

from reconciler.adapters import fleet as fleet_hosts
from reconciler.core.contracts import ContractsView, ServiceContract, plan_contract
from reconciler.engine.contract import observe_contracts
from reconciler.engine.dbphase import DatabaseSteps
from reconciler.sandbox import images
from tests.dbfleet import create_database, drop_database, make_db_env_repo, sql, web
from tests.envrepo import containers, remove_containers, serving
from tests.test_dbphase_fleet import deploy, refused

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV = "dcmdcontract"
PORT = 18240
REPOSITORY = "demo/web-dated"
COMMAND = ('{command: ["sh", "-c", "echo phase=$RECONCILER_MIGRATION_PHASE"], '
           'allow_contract: true, soak: 1s}')


def dated_image(fleet, version: str, created: str) -> str:
    """A demo image whose config says it was created at ``created`` (the
    sandbox's own images all carry one fixed time); pushed by digest."""
    base = images.base_layer_tar(images.BUSYBOX.read_bytes(), (images._SCRIPTS / "entrypoint.sh").read_text(),
                                 (images._SCRIPTS / "demo-handler").read_text())
    variant = images.Variant(f"{version}-{created[:10]}", version, "healthy")
    built = images.build_image(variant, base, images.docker_arch())
    config = json.loads(built.config.data)
    config["created"] = created
    config_blob = images.Blob(images.CONFIG_TYPE, images._canonical_json(config))
    manifest = images._canonical_json({"schemaVersion": 2, "mediaType": images.MANIFEST_TYPE,
                                       "config": config_blob.descriptor(),
                                       "layers": [layer.descriptor() for layer in built.layers]})
    pushed = images.push_image(fleet.registry, REPOSITORY, images.BuiltImage(variant, config_blob, built.layers, manifest))
    return f"{fleet.registry}/{REPOSITORY}:{variant.tag}@{pushed}"


@pytest.fixture
def db_env(fleet, tmp_path, monkeypatch):
    dsn = create_database(fleet, f"rdb_{ENV}")
    sql(dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
    monkeypatch.setenv("RECONCILER_BACKUP_DIR", str(tmp_path / "backups"))
    repo = make_db_env_repo(tmp_path / "envrepo", fleet, ENV, dsn)
    repo.dsn, repo.store = dsn, tmp_path / "backups"
    yield repo
    remove_containers(fleet, f"{ENV}-")
    drop_database(fleet, f"rdb_{ENV}")


def run_contract(repo) -> tuple:
    """Observe, plan and run the contract as the engine does, its soak long over."""
    target = repo.target()
    env = target.environment
    hosts = fleet_hosts.open_hosts(env.hosts, identity_file=target.identity_file, known_hosts_file=target.known_hosts_file)
    try:
        now = time.time()
        view = observe_contracts(env, hosts, {"web": now - 60}, now)
        plan = plan_contract(env, view, target.revision)
        with DatabaseSteps(env, hosts, target.revision) as steps:
            for action in plan.actions:
                steps.run(action)
        return view, plan, steps.result
    finally:
        fleet_hosts.close_hosts(hosts)


def test_a_release_older_than_a_contract_its_command_ran_is_refused_before_any_container_starts(fleet, db_env):
    old = dated_image(fleet, "v1", "2025-01-01T00:00:00Z")
    new = dated_image(fleet, "v2", "2025-06-01T00:00:00Z")
    newer = dated_image(fleet, "v3", "2025-09-01T00:00:00Z")
    db_env.commit(web(old, PORT, migrations=COMMAND), message="web v1")
    assert deploy(db_env).outcome.result == "deployed"
    db_env.commit(web(new, PORT, migrations=COMMAND), message="web v2")
    assert deploy(db_env).outcome.result == "deployed"

    view, plan, result = run_contract(db_env)

    assert view == ContractsView(ENV, (ServiceContract("web", "h1", command_pending=True, soak_remaining=0.0),))
    assert [(a.step, a.service) for a in plan.actions] == [("CheckMigrations", "web"), ("Backup", ""), ("Migrate", "web")]
    assert result.applied == ("command:web",) and result.backup
    # Every run of the command is recorded with the image that ran it and its creation time (from the engine).
    assert sql(db_env.dsn, "SELECT phase, image, image_created, exit_code FROM reconciler_command_runs ORDER BY id") == [
        ("expand", old, "2025-01-01T00:00:00Z", 0), ("expand", new, "2025-06-01T00:00:00Z", 0),
        ("contract", new, "2025-06-01T00:00:00Z", 0)]
    assert run_contract(db_env)[0].services[0].command_pending is False  # once per image

    # A revert to v1: refused before anything starts anywhere.
    before = containers(fleet, ENV)
    db_env.commit(web(old, PORT, migrations=COMMAND), message="revert to web v1")
    reason, message = refused(db_env)
    assert reason == "ContractRollbackRefused"
    assert message.startswith(f"web: the image {old} is older than the contract its migration command ran with {new}")
    assert "reconciler db restore" in message
    assert containers(fleet, ENV) == before
    assert serving(fleet, PORT) == {h.name: "demo-web v2" for h in fleet.hosts}
    assert sql(db_env.dsn, "SELECT count(*) FROM reconciler_command_runs")[0][0] == 3  # its command never ran

    # The emergency lever back to v1's retained containers: refused too.
    from reconciler.cli.main import main

    argv = ["rollback", "--repo", str(db_env.path), "--env", ENV, "--identity", db_env.identity, "--yes"]
    assert main(argv) != 0
    assert containers(fleet, ENV) == before
    assert serving(fleet, PORT) == {h.name: "demo-web v2" for h in fleet.hosts}

    # A release built after the one that ran the contract goes ahead.
    db_env.commit(web(newer, PORT, migrations=COMMAND), message="web v3")
    assert deploy(db_env).outcome.result == "deployed"
    assert serving(fleet, PORT) == {h.name: "demo-web v3" for h in fleet.hosts}
