"""The database phase on the real fleet: the deploy takes a verified backup,
checks and applies expand migrations shipped in the new image, and keeps the
expanded schema when the containers roll back.

Each test has its own environment, database and host port (18200-18299).
"""

from __future__ import annotations

import pytest

from reconciler.adapters.db import list_backups, verify
from tests.dbfleet import columns, database_env, fingerprint, migrating_image, sql, web
from tests.envrepo import containers, deploy, serving

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ADD_TAG = {"0001_add_tag.expand.sql": "-- a nullable column: old code ignores it\nALTER TABLE notes ADD COLUMN tag text;\n"}


@pytest.fixture
def db_env(fleet, tmp_path, request, monkeypatch):
    name = "d" + request.node.name.replace("test_", "").replace("_", "")[:10].lower()
    name = "".join(c for c in name if c.isalnum())
    with database_env(fleet, tmp_path, monkeypatch, name, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)",
                      "INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 500) g") as repo:
        yield repo


def refused(repo) -> tuple[str, str]:
    """Deploy HEAD, which the engine must refuse before any host changed:
    (the refusal's reason, its message)."""
    done = deploy(repo)
    assert (done.result.result, done.outcome) == ("refused", None), done.result
    return done.result.reason, done.result.message


def test_expand_migration_backup_verifies_column_added_new_version_serves(fleet, db_env):
    db_env.commit(web(migrating_image(fleet, {}, version="v1"), 18201))
    assert deploy(db_env).outcome.result == "deployed"
    commit = db_env.commit(web(migrating_image(fleet, ADD_TAG, version="v2"), 18201), message="web v2 + tag")
    before = fingerprint(db_env.dsn)

    result = deploy(db_env)

    assert result.outcome.result == "deployed", result.outcome.failure
    assert serving(fleet, 18201) == {h.name: "demo-web v2" for h in fleet.hosts}
    assert columns(db_env.dsn, "notes")["tag"] == ("text", "YES")
    assert fingerprint(db_env.dsn) == before
    ours = [b for b in list_backups(db_env.store) if b.commit == commit]
    assert len(ours) == 1 and ours[0].path.name.endswith(f"_{commit[:12]}_pre-deploy.dump")
    assert ours[0].environment == db_env.env
    verify(ours[0])
    assert sql(db_env.dsn, "SELECT name, phase FROM reconciler_migrations") == [("0001_add_tag.expand.sql", "expand")]
    # No one-off container left behind on any host.
    assert all(len(seen) == 2 for seen in containers(fleet, db_env.env).values())


def test_never_healthy_release_rolls_back_containers_and_keeps_the_expanded_schema(fleet, db_env):
    db_env.commit(web(migrating_image(fleet, {}, version="v1"), 18202))
    assert deploy(db_env).outcome.result == "deployed"
    before = fingerprint(db_env.dsn)
    db_env.commit(web(migrating_image(fleet, ADD_TAG, version="v3", mode="unhealthy"), 18202), message="bad web")

    result = deploy(db_env)

    assert result.outcome.result == "rolled-back"
    assert serving(fleet, 18202) == {h.name: "demo-web v1" for h in fleet.hosts}
    assert "tag" in columns(db_env.dsn, "notes")  # kept: never a down-migration
    assert fingerprint(db_env.dsn) == before
    # The previous release's queries still work against the expanded table.
    sql(db_env.dsn, "INSERT INTO notes (id, body) VALUES (501, 'written by v1 after the rollback')")
    assert fingerprint(db_env.dsn)[0] == before[0] + 1


@pytest.mark.parametrize("sql_text, line, what", [
    ("ALTER TABLE notes ADD COLUMN tag text;\n\nALTER TABLE notes DROP COLUMN body;\n", 3, "DROP COLUMN body"),
    ("-- sneaky\nDO $$ BEGIN\n  ALTER TABLE notes RENAME COLUMN body TO text;\nEND $$;\n", 2, "DO blocks"),
    ("ALTER TABLE notes ADD COLUMN tag text;\nALTER TABLE notes ALTER COLUMN tag SET NOT NULL;\n", 2, "SET NOT NULL"),
], ids=["drop-column", "rename-in-do", "set-not-null"])
def test_non_additive_expand_is_refused_before_any_change(fleet, db_env, sql_text, line, what):
    db_env.commit(web(migrating_image(fleet, {}, version="v1"), 18203))
    assert deploy(db_env).outcome.result == "deployed"
    before = (containers(fleet, db_env.env), columns(db_env.dsn, "notes"), fingerprint(db_env.dsn))
    db_env.commit(web(migrating_image(fleet, {"0001_bad.expand.sql": sql_text}, version="v2"), 18203))

    reason, message = refused(db_env)

    assert reason == "MigrationRefused"
    assert f"0001_bad.expand.sql:{line}:" in message and what in message, message
    assert (containers(fleet, db_env.env), columns(db_env.dsn, "notes"), fingerprint(db_env.dsn)) == before
    assert serving(fleet, 18203) == {h.name: "demo-web v1" for h in fleet.hosts}


def test_a_migration_command_runs_in_a_one_off_container_told_the_phase(fleet, db_env):
    image = fleet.images["v2"]
    ok = '{command: ["sh", "-c", "echo phase=$RECONCILER_MIGRATION_PHASE; test \\"$RECONCILER_MIGRATION_PHASE\\" = expand"]}'
    db_env.commit(web(image, 18205, migrations=ok))
    result = deploy(db_env)
    assert result.outcome.result == "deployed", result.outcome.failure
    assert set(serving(fleet, 18205).values()) == {"demo-web v2"}
    assert all(len(seen) == 1 for seen in containers(fleet, db_env.env).values())  # the one-off is gone

    before = containers(fleet, db_env.env)
    failing = '{command: ["sh", "-c", "echo cannot migrate; exit 3"]}'
    db_env.commit(web(fleet.images["v1"], 18205, migrations=failing), message="v1 with a failing migration")
    reason, message = refused(db_env)
    assert reason == "MigrationFailed" and "exit 3" in message and "cannot migrate" in message
    assert containers(fleet, db_env.env) == before  # nothing deployed
    assert set(serving(fleet, 18205).values()) == {"demo-web v2"}
