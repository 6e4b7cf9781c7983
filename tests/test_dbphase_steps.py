"""DatabaseSteps on fake hosts and a throw-away PostgreSQL: refusals before
any backup, a backup reused by a retry, retention per database, and a
release older than a contract its migration command ran.

The hosts are ``tests/fakes.py``'s (images ship files, creation times and a
migration command's behaviour); the database is real, so what the tracking
tables and the backup store hold is checked for real.
"""

from __future__ import annotations

import pathlib
import subprocess

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from fakes import World, image
from reconciler.adapters.db import list_backups
from reconciler.adapters.db.connection import tool, tool_env, with_database
from reconciler.adapters.db.migrate import apply_contract, apply_expand
from reconciler.adapters.db.testing import can_run_cluster, scratch_cluster
from reconciler.core import managed
from reconciler.core.contracts import ContractsView, ServiceContract, plan_contract
from reconciler.errors import ContractRollbackRefused
from reconciler.core.migrations import MigrationRefused, parse_files
from reconciler.core.model import Database, Environment, Host, Migrations, Policy, Service
from reconciler.core.plan import plan_rollback
from reconciler.core.plan_steps import DATABASE_STEPS, Backup, Migrate
from reconciler.engine.contract import observe_contracts, refuse_rollback_past_contracts
from reconciler.engine.dbphase import DatabaseSteps
from reconciler.errors import HostUnreachable, StalledError

pytestmark = pytest.mark.skipif(not can_run_cluster(), reason="needs root and PostgreSQL server binaries")

ENV = "prod"
HOSTS = ("h1", "h2")
COMMIT = "c1" * 20
ADD_TAG = {"0001_add_tag.expand.sql": "ALTER TABLE notes ADD COLUMN tag text;\n"}
DROP_LEGACY = {**ADD_TAG, "0002_drop_legacy.contract.sql": "ALTER TABLE notes DROP COLUMN legacy;\n"}
V1 = image("registry.test/web", "v1")
V2 = image("registry.test/web", "v2")
V3 = image("registry.test/web", "v3")
BAD = image("registry.test/web", "bad")


@pytest.fixture(scope="module")
def cluster() -> str:
    with scratch_cluster() as (dsn, _):
        yield dsn


class Db:
    def __init__(self, cluster: str, name: str, tmp: pathlib.Path) -> None:
        with psycopg.connect(cluster, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.name, self.dsn = name, with_database(cluster, name)
        self.sql("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, legacy text)")
        self.sql("INSERT INTO notes SELECT g, md5(g::text), 'old' FROM generate_series(1, 50) g")
        self.dsn_file = tmp / f"{name}.dsn"
        self.dsn_file.write_text(self.dsn + "\n")
        self.store = tmp / "backups"

    def sql(self, query: str, *params):
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else None

    def columns(self) -> set[str]:
        return {r[0] for r in self.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'")}

    def backups(self) -> list:
        return list(list_backups(self.store))


@pytest.fixture
def db(cluster, request, tmp_path) -> Db:
    return Db(cluster, "s_" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40], tmp_path)


@pytest.fixture
def world() -> World:
    w = World(*HOSTS)
    w.registry.ship(V1, files={"/migrations": {}}, created="2026-01-01T00:00:00Z")
    w.registry.ship(V2, files={"/migrations": ADD_TAG}, created="2026-02-01T00:00:00Z")
    w.registry.ship(V3, files={"/migrations": DROP_LEGACY}, created="2026-03-01T00:00:00Z")
    w.registry.ship(BAD, files={"/migrations": {"0001_bad.expand.sql": "ALTER TABLE notes ADD COLUMN tag text;\n"
                                                "ALTER TABLE notes DROP COLUMN body;\n"}})
    return w


def web(img, *, path="/migrations", command=(), allow=False) -> Service:
    return Service("web", img, HOSTS, migrations=Migrations(path=path, command=command, allow_contract=allow, soak=60.0))


def environment(db: Db, *services, backup="always", keep_retired=1, via_host=None, name=ENV) -> Environment:
    return Environment(name, tuple(Host(h, f"10.0.0.{i}") for i, h in enumerate(HOSTS, 1)), services,
                       Policy(keep_retired=keep_retired),
                       database=Database(dsn_file=str(db.dsn_file), backup=backup, via_host=via_host))


class Events(list):
    def __call__(self, event, **fields):
        self.append((event, fields))

    def reasons(self, step):
        return [f.get("reason", "") for e, f in self if f.get("step") == step]


def deploy_steps(world: World, env: Environment, commit: str = COMMIT, *, events=None):
    """The database steps ``plan_deploy`` gives, run as the executor runs them: in order, one at a time."""
    plan = world.plan(env, commit)
    for pull in [a for a in plan.actions if a.step == "Pull"]:  # pre-flight comes first
        world.hosts[pull.host].pull(pull.image)
    actions = [a for a in plan.actions if isinstance(a, DATABASE_STEPS)]
    with DatabaseSteps(env, world.hosts, commit, store_dir=env_store(env), report=events if events is not None else (lambda *a, **k: None)) as steps:
        for action in actions:
            steps.run(action)
        return steps.result


def env_store(env: Environment) -> pathlib.Path:
    return pathlib.Path(env.database.dsn_file).parent / "backups"


def run_everywhere(world: World, env: Environment, service: Service, revision: str = COMMIT) -> None:
    """As if a deploy of ``service`` had finished: its active container runs on every host."""
    for host in world.hosts.values():
        for c in [c for c in host.containers.values() if c.labels.get(managed.LABEL_SERVICE) == service.name]:
            if c.name == managed.container_name(env.name, service.name):
                old = host.observe().managed(env.name)
                active = next(o for o in old if o.id == c.id)
                c.name = managed.retired_name(env.name, active)
                c.state = "exited"
        host.run_container(service, env.name, revision, managed.container_name(env.name, service.name))


# ------------------------------------------------------------ refusals before any backup


def test_a_non_additive_expand_file_is_refused_before_any_backup_or_change(world, db):
    env = environment(db, web(BAD))

    with pytest.raises(MigrationRefused) as raised:
        deploy_steps(world, env)

    assert "0001_bad.expand.sql:2: DROP COLUMN body" in str(raised.value)
    assert db.backups() == [] and not db.store.exists()
    assert db.columns() == {"id", "body", "legacy"}
    assert db.sql("SELECT to_regclass('reconciler_migrations')") == [(None,)]


def test_the_files_are_read_from_the_new_image_on_its_first_target_host_once(world, db):
    deploy_steps(world, environment(db, web(V2)))
    assert (world.hosts["h1"].calls.get("read_image_files"), world.hosts["h2"].calls.get("read_image_files")) == (1, None)
    assert "tag" in db.columns()


def test_a_host_lost_while_reading_the_image_is_transient_and_costs_no_backup(world, db):
    world.hosts["h1"].fail("read_image_files", error=HostUnreachable)
    with pytest.raises(HostUnreachable) as raised:
        deploy_steps(world, environment(db, web(V2)))
    assert raised.value.kind == "transient" and raised.value.host == "h1"
    assert db.backups() == []


def test_a_release_older_than_a_contract_file_is_refused_before_any_backup(world, db):
    shipped = parse_files(sorted(DROP_LEGACY.items()))
    apply_expand(db.dsn, shipped)
    apply_contract(db.dsn, shipped)

    with pytest.raises(ContractRollbackRefused) as raised:
        deploy_steps(world, environment(db, web(V2)))

    message = str(raised.value)
    assert message.startswith(f"web: the image {V2} ships migrations up to 0001, but the contract migration(s) "
                              "0002_drop_legacy.contract.sql already ran")
    assert "reconciler db restore" in message
    assert db.backups() == []


# ------------------------------------------------------------ backups: reuse, skip, retention


def test_a_retry_of_the_same_commit_reuses_its_verified_backup(world, db):
    env = environment(db, web(V2))
    events = Events()
    first = deploy_steps(world, env)
    assert (first.backup_reused, first.applied) == (False, ("0001_add_tag.expand.sql",))

    # The deploy failed after the migration (a host went away); the agent retries the same commit.
    retry = deploy_steps(world, env, events=events)

    assert (retry.backup, retry.backup_reused, retry.applied) == (first.backup, True, ())
    assert retry.record()["backup_reused"] is True and "reused" in retry.summary()
    assert [b.path for b in db.backups()] == [pathlib.Path(first.backup)]
    assert any("of this commit reused: no migration ran since" in r for r in events.reasons("db-backup"))


def test_a_migration_by_anyone_else_since_means_a_new_backup(world, db):
    env = environment(db, web(V2))
    first = deploy_steps(world, env)
    apply_expand(db.dsn, parse_files([("0005_other.expand.sql", "CREATE TABLE other (id int);")]))
    events = Events()

    retry = deploy_steps(world, env, events=events)

    assert retry.backup != first.backup and not retry.backup_reused
    assert len(db.backups()) == 2
    assert any("0005_other.expand.sql" in r for r in events.reasons("db-backup"))
    # Another commit never reuses this one's backup.
    other = deploy_steps(world, env, "d2" * 20)
    assert other.backup not in (first.backup, retry.backup) and not other.backup_reused


def test_a_restore_since_the_backup_means_a_new_one_even_when_no_migration_differs(world, db):
    env = environment(db, web(V1))  # no migration: the backup is all there is (backup: always)
    first = deploy_steps(world, env)
    assert deploy_steps(world, env).backup_reused
    # A human restores that very backup (as `reconciler db restore` does): same files, same runs.
    subprocess.run([tool("pg_restore"), "--clean", "--if-exists", "--single-transaction", "--no-owner",
                    "-d", db.name, first.backup], check=True, env=tool_env(db.dsn))
    events = Events()

    again = deploy_steps(world, env, events=events)

    assert not again.backup_reused and again.backup != first.backup
    assert any("public.notes was dropped or recreated since (a restore?)" in r for r in events.reasons("db-backup"))


def test_a_retry_after_its_own_migration_command_reuses_another_commits_command_does_not(world, db):
    env = environment(db, web(V1, path=None, command=("migrate",)))
    first = deploy_steps(world, env)
    assert first.applied == ("command:web",)
    assert deploy_steps(world, env).backup_reused
    deploy_steps(world, env, "d2" * 20)  # another commit's command ran

    again = deploy_steps(world, env)

    assert not again.backup_reused and again.backup != first.backup


def test_when_migrating_without_anything_pending_takes_no_backup_and_says_so(world, db):
    result = deploy_steps(world, environment(db, web(V1), backup="when-migrating"))
    assert result.skipped == "no expand migration pending: no backup (backup: when-migrating)"
    assert result.backup is None and db.backups() == []
    # A migration command may always have work: it gets its backup.
    result = deploy_steps(world, environment(db, web(V1, path=None, command=("migrate",)), backup="when-migrating"))
    assert result.backup and result.skipped is None


def test_retention_is_per_database_and_environment(world, db, cluster, tmp_path):
    other_db = Db(cluster, db.name + "_b", tmp_path)
    mine = environment(db, web(V1), keep_retired=1)  # keep max(2, 1 + 1) = 2
    other_database = environment(other_db, web(V1), keep_retired=1)
    other_environment = environment(db, web(V1), keep_retired=1, name="staging")
    backup = Backup("", "", "backup", database="app", required=True)

    def take(env, commit):
        with DatabaseSteps(env, world.hosts, commit, store_dir=db.store) as steps:
            steps.run(backup)
            return steps.result.backup

    kept_elsewhere = [take(other_database, "b1" * 20), take(other_database, "b2" * 20), take(other_environment, "e1" * 20)]
    mine_taken = [take(mine, f"{n}a" * 20) for n in range(1, 5)]

    left = {str(b.path) for b in list_backups(db.store)}
    assert left == set(kept_elsewhere) | set(mine_taken[-2:])


# ------------------------------------------------------------ contracts run by a migration command


def test_a_release_older_than_a_contract_its_command_ran_is_refused_for_deploy_and_rollback(world, db):
    phases = []
    for ref in (V1, V2, V3):
        world.registry.commands[ref.pull_ref] = lambda argv, env: (phases.append(env["RECONCILER_MIGRATION_PHASE"]), (0, "ok"))[1]
    old, new = web(V1, path=None, command=("manage", "migrate")), web(V2, path=None, command=("manage", "migrate"), allow=True)
    deploy_steps(world, environment(db, old))
    run_everywhere(world, environment(db, old), old, "r1" * 20)
    deploy_steps(world, environment(db, new), "r2" * 20)
    run_everywhere(world, environment(db, new), new, "r2" * 20)
    env = environment(db, new)

    view = observe_contracts(env, world.hosts, {"web": 0.0}, 1000.0)
    assert view == ContractsView(ENV, (ServiceContract("web", "h1", command_pending=True, soak_remaining=0.0),))
    with DatabaseSteps(env, world.hosts, "r2" * 20, store_dir=db.store) as steps:
        for action in plan_contract(env, view, "r2" * 20).actions:
            steps.run(action)
    assert steps.result.applied == ("command:web",) and phases == ["expand", "expand", "contract"]
    assert observe_contracts(env, world.hosts, {"web": 0.0}, 1000.0).services[0].command_pending is False
    backups, one_offs = db.backups(), len(world.hosts["h1"].one_offs)

    # Deploying v1 again (a revert commit) is refused before any backup or command.
    with pytest.raises(ContractRollbackRefused) as raised:
        deploy_steps(world, environment(db, old), "r3" * 20)
    message = str(raised.value)
    assert message.startswith(f"web: the image {V1} is older than the contract its migration command ran with {V2}")
    assert "reconciler db restore" in message
    assert (db.backups(), len(world.hosts["h1"].one_offs)) == (backups, one_offs)

    # The rollback lever to v1's retained containers: refused too.
    plan = plan_rollback(env, world.observe())
    assert {a.step for a in plan.actions} == {"Restore"}
    with pytest.raises(ContractRollbackRefused):
        refuse_rollback_past_contracts(env, world.hosts, plan, world.observe())

    # A release built after the one that ran the contract goes ahead.
    newer = deploy_steps(world, environment(db, web(V3, path=None, command=("manage", "migrate"))), "r4" * 20)
    assert newer.applied == ("command:web",)


def test_a_failed_migration_command_stops_the_run_and_counts_as_a_run(world, db):
    world.registry.commands[V1.pull_ref] = lambda argv, env: (3, "cannot migrate")
    with pytest.raises(StalledError) as raised:
        deploy_steps(world, environment(db, web(V1, path=None, command=("migrate",))))
    assert "exit 3; nothing was deployed" in str(raised.value) and "cannot migrate" in str(raised.value)
    assert db.sql("SELECT phase, exit_code, image_id FROM reconciler_command_runs") == [
        ("expand", 3, world.hosts["h1"].image_facts(V1).id)]


def test_a_contract_migrate_without_a_backup_in_the_run_is_refused(world, db):
    env = environment(db, web(V3, allow=True))
    apply_expand(db.dsn, parse_files(sorted(ADD_TAG.items())))
    world.hosts["h1"].add_image(V3)
    with DatabaseSteps(env, world.hosts, COMMIT, store_dir=db.store) as steps:
        with pytest.raises(StalledError, match="without a verified backup"):
            steps.run(Migrate("h1", "web", "contract", phase="contract"))
    assert "legacy" in db.columns()


def test_via_host_opens_one_tunnel_when_first_needed_and_close_closes_it(world, db):
    env = environment(db, web(V2), via_host="h2")
    steps = DatabaseSteps(env, world.hosts, COMMIT, store_dir=db.store)
    assert world.hosts["h2"].tunnels == []
    plan = world.plan(env, COMMIT)
    for pull in [a for a in plan.actions if a.step == "Pull"]:
        world.hosts[pull.host].pull(pull.image)
    for action in [a for a in plan.actions if isinstance(a, DATABASE_STEPS)]:
        steps.run(action)
    (tunnel,) = world.hosts["h2"].tunnels
    assert tunnel.open and (tunnel.address, tunnel.port) == ("127.0.0.1", int(conninfo_to_dict(db.dsn)["port"]))
    steps.close()
    assert tunnel.closed and "tag" in db.columns()


# ------------------------------------------------------------ inside the executor


def test_through_the_executor_a_refusal_changes_no_host_and_a_good_release_migrates_then_deploys(world, db):
    before = world.snapshot()
    with DatabaseSteps(environment(db, web(BAD)), world.hosts, COMMIT, store_dir=db.store) as steps:
        with pytest.raises(MigrationRefused):
            world.apply(environment(db, web(BAD)), COMMIT, database=steps)
    assert world.snapshot() == before and db.backups() == []

    env = environment(db, web(V2))
    with DatabaseSteps(env, world.hosts, COMMIT, store_dir=db.store) as steps:
        outcome = world.apply(env, COMMIT, database=steps)
    assert outcome.result == "deployed", outcome.failure
    assert world.active(ENV, "web") == {h: (str(V2), "running") for h in HOSTS}
    assert "tag" in db.columns() and steps.result.applied == ("0001_add_tag.expand.sql",)
    assert [s["step"] for s in outcome.steps][:3] == ["CheckMigrations", "Backup", "Migrate"]
