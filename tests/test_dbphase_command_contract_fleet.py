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

from reconciler.sandbox import images
from tests.dbfleet import database_env, last_attempt, reconcile_at, sql, web
from tests.envrepo import containers, deploy, serving
from tests.test_dbphase_fleet import refused

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
    with database_env(fleet, tmp_path, monkeypatch, ENV, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)") as repo:
        yield repo


def test_a_release_older_than_a_contract_its_command_ran_is_refused_before_any_container_starts(fleet, db_env):
    old = dated_image(fleet, "v1", "2025-01-01T00:00:00Z")
    new = dated_image(fleet, "v2", "2025-06-01T00:00:00Z")
    newer = dated_image(fleet, "v3", "2025-09-01T00:00:00Z")
    db_env.commit(web(old, PORT, migrations=COMMAND), message="web v1")
    assert deploy(db_env).outcome.result == "deployed"
    db_env.commit(web(new, PORT, migrations=COMMAND), message="web v2")
    assert deploy(db_env).outcome.result == "deployed"

    # The agent's reconcile once the 1 s soak is long over: the contract runs, through the engine.
    ran = reconcile_at(db_env, time.time() + 60)

    assert ran.result == "contracted", ran
    assert [(a.step, a.service) for a in ran.plan.actions] == [("CheckMigrations", "web"), ("Backup", ""), ("Migrate", "web")]
    database = last_attempt(db_env, ran.commit).details["database"]
    assert database["migrations"] == ["command:web"] and database["backup"]
    # Every run of the command is recorded with the image that ran it and its creation time (from the engine).
    assert sql(db_env.dsn, "SELECT phase, image, image_created, exit_code FROM reconciler_command_runs ORDER BY id") == [
        ("expand", old, "2025-01-01T00:00:00Z", 0), ("expand", new, "2025-06-01T00:00:00Z", 0),
        ("contract", new, "2025-06-01T00:00:00Z", 0)]
    again = reconcile_at(db_env, time.time() + 120)
    assert (again.result, again.requeue_after) == ("in-sync", None)  # once per image: nothing pending any more

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
