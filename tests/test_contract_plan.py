"""The contract planner and the older-than-a-contract rules: pure, tested by equality."""

from __future__ import annotations

import pytest

from fakes import image
from reconciler.adapters.db.backups import changed_since, migration_record
from reconciler.core.contracts import (
    CommandRun,
    ContractsView,
    ImageFacts,
    ServiceContract,
    epoch,
    newer_contracts,
    next_contract_in,
    older_than_contract,
    plan_contract,
    soak_remaining,
)
from reconciler.core.model import Database, Environment, Host, Migrations, Service
from reconciler.core.plan import Finding, Plan
from reconciler.core.plan_steps import Backup, CheckMigrations, Migrate

HOSTS = ("h1", "h2")
API = image("registry.test/api", "v2")
WEB = image("registry.test/web", "v2")


def service(name, img, *, allow=True, soak=3600.0, path="/migrations", command=(), depends_on=()) -> Service:
    return Service(name, img, HOSTS, depends_on=depends_on,
                   migrations=Migrations(path=path, command=command, allow_contract=allow, soak=soak))


def environment(*services, database=Database(dsn_file="/dsn", name="app")) -> Environment:
    return Environment("prod", tuple(Host(h, f"10.0.0.{i}") for i, h in enumerate(HOSTS, 1)), services, database=database)


def test_a_soaked_allowed_contract_is_check_backup_migrate_dependencies_first():
    env = environment(service("web", WEB, depends_on=("api",), path=None, command=("manage", "migrate")), service("api", API))
    view = ContractsView("prod", (
        ServiceContract("web", "h1", command_pending=True, soak_remaining=0.0),
        ServiceContract("api", "h1", pending=("0002_drop_legacy.contract.sql",), soak_remaining=0.0),
    ))

    assert plan_contract(env, view, "c0ffee") == Plan("prod", "c0ffee", actions=(
        CheckMigrations("h1", "api", f"read the contract migrations {API} ships", phase="contract"),
        CheckMigrations("h1", "web", f"read the contract migrations {WEB} ships", phase="contract"),
        Backup("", "", "verified backup of app before the contract", database="app", required=True),
        Migrate("h1", "api", "contract: 0002_drop_legacy.contract.sql", phase="contract"),
        Migrate("h1", "web", "contract: its migration command", phase="contract"),
    ))
    assert next_contract_in(env, view) is None


def test_a_contract_in_its_soak_waits_and_says_when_it_is_due():
    env = environment(service("api", API), service("web", WEB, path=None, command=("migrate",)))
    view = ContractsView("prod", (
        ServiceContract("api", "h1", pending=("0002_drop.contract.sql",), soak_remaining=1200.0),
        ServiceContract("web", "h1", command_pending=True, soak_remaining=300.0),
    ))

    assert plan_contract(env, view, "c0ffee") == Plan("prod", "c0ffee", findings=(
        Finding("h1", "api", "contract-waiting", "0002_drop.contract.sql pending; 1200s of the 3600s soak left"),
        Finding("h1", "web", "contract-waiting", "its migration command pending; 300s of the 3600s soak left"),
    ))
    assert next_contract_in(env, view) == 300.0


def test_only_the_soaked_service_contracts_the_other_keeps_waiting():
    env = environment(service("api", API), service("web", WEB, soak=7200.0))
    view = ContractsView("prod", (
        ServiceContract("api", "h1", pending=("0002_drop.contract.sql",), soak_remaining=0.0),
        ServiceContract("web", "h2", pending=("0005_drop.contract.sql",), soak_remaining=3600.0),
    ))

    plan = plan_contract(env, view, "r")
    assert [(a.step, a.service) for a in plan.actions] == [("CheckMigrations", "api"), ("Backup", ""), ("Migrate", "api")]
    assert plan.findings == (Finding("h2", "web", "contract-waiting", "0005_drop.contract.sql pending; 3600s of the 7200s soak left"),)
    assert next_contract_in(env, view) == 3600.0


@pytest.mark.parametrize("seen, env, detail", [
    (ServiceContract("api", "h1", pending=("0002_d.contract.sql",), soak_remaining=0.0),
     environment(service("api", API, allow=False)), "0002_d.contract.sql pending; migrations.allow_contract is false"),
    (ServiceContract("api", "h1", pending=("0002_d.contract.sql",), soak_remaining=None),
     environment(service("api", API)), "0002_d.contract.sql pending; waits for the running image to be deployed healthy"),
    (ServiceContract("api", "h1", not_running=("h2/api",), soak_remaining=0.0),
     environment(service("api", API)), f"contracts wait until {API} runs on h2/api"),
    (ServiceContract("api", "h1", pending=("0002_d.contract.sql",), soak_remaining=0.0),
     environment(service("api", API), database=None), "0002_d.contract.sql pending; the environment declares no database"),
], ids=["not-allowed", "never-healthy", "not-running", "no-database"])
def test_what_a_contract_waits_for_is_a_finding_and_no_step(seen, env, detail):
    plan = plan_contract(env, ContractsView("prod", (seen,)), "r")
    assert plan == Plan("prod", "r", findings=(Finding("h1", "api", "contract-waiting", detail),))
    assert next_contract_in(env, ContractsView("prod", (seen,))) is None


def test_nothing_pending_plans_nothing_and_waits_for_nothing():
    env = environment(service("api", API))
    view = ContractsView("prod", (ServiceContract("api", "h1", soak_remaining=100.0),))
    assert plan_contract(env, view, "r") == Plan("prod", "r")
    assert next_contract_in(env, view) is None


def test_soak_remaining_counts_from_the_healthy_start():
    assert soak_remaining(3600.0, 1000.0, 1600.0) == 3000.0
    assert soak_remaining(3600.0, 1000.0, 9000.0) == 0.0
    assert soak_remaining(3600.0, None, 9000.0) is None


# ------------------------------------------------------------ older than a contract


def run(image_id, phase="expand", created="2026-01-01T00:00:00Z", *, service="web", n=0) -> CommandRun:
    return CommandRun(f"t{n}-{image_id}-{phase}", service, phase, f"registry.test/web@{image_id}", image_id, created,
                      "c" * 40, "h1", 0)


V1 = ImageFacts("registry.test/web:v1", "id1", "2026-01-01T00:00:00Z")
V2 = ImageFacts("registry.test/web:v2", "id2", "2026-02-01T00:00:00.123456789Z")
V3 = ImageFacts("registry.test/web:v3", "id3", "2026-03-01T00:00:00Z")
HISTORY = (run("id1", n=1), run("id2", created=V2.created, n=2), run("id2", "contract", V2.created, n=3))


def test_no_contract_run_allows_any_image():
    assert older_than_contract("web", V1, HISTORY[:2]) is None


def test_the_image_that_ran_the_contract_and_a_newer_one_pass():
    assert older_than_contract("web", V2, HISTORY) is None
    assert older_than_contract("web", V3, HISTORY) is None


def test_an_image_deployed_before_the_contract_image_is_refused_naming_service_image_contract_and_the_way_out():
    why = older_than_contract("web", V1, HISTORY)
    assert why.startswith("web: the image registry.test/web:v1 is older than the contract its migration command ran "
                          "with registry.test/web@id2 (commit cccccccccccc, on h1)")
    assert "it ran its migration command before registry.test/web@id2 first did" in why
    assert "reconciler db restore BACKUP --env ENV" in why


def test_an_image_never_deployed_but_created_before_is_refused():
    old = ImageFacts("registry.test/web:hotfix", "id9", "2026-01-15T00:00:00Z")
    assert f"it was created {old.created}, before registry.test/web@id2" in older_than_contract("web", old, HISTORY)


def test_the_same_creation_time_cannot_be_ordered_and_is_refused():
    same = ImageFacts("registry.test/web:rebuilt", "id8", V2.created)
    assert "created at the same moment as registry.test/web@id2" in older_than_contract("web", same, HISTORY)
    unknown = ImageFacts("registry.test/web:odd", "id7", "")
    assert "cannot be ordered" in older_than_contract("web", unknown, HISTORY)


def test_the_newest_contract_counts_an_image_that_ran_an_older_contract_is_refused():
    history = HISTORY + (run("id3", created=V3.created, n=4), run("id3", "contract", V3.created, n=5))
    assert "before registry.test/web@id3 first did" in older_than_contract("web", V2, history)
    assert older_than_contract("web", V3, history) is None


def test_another_services_contract_does_not_bind_this_one():
    assert older_than_contract("api", V1, HISTORY) is None


def test_epoch_reads_the_engines_nanoseconds_and_zones():
    assert epoch("2024-01-01T00:00:00Z") == 1704067200.0
    assert epoch("2024-01-01T00:00:00.123456789Z") == pytest.approx(1704067200.123456)
    assert epoch("2024-01-01T01:00:00+01:00") == 1704067200.0
    assert epoch("") is None and epoch("yesterday") is None


def test_newer_contracts_names_the_files_an_image_does_not_know():
    rows = [(1, "0001_a.expand.sql", "expand"), (2, "0002_drop.contract.sql", "contract")]
    assert newer_contracts("api", "img", 2, rows) is None
    why = newer_contracts("api", "img", 1, rows)
    assert why.startswith("api: the image img ships migrations up to 0001, but the contract migration(s) "
                          "0002_drop.contract.sql already ran")


# ------------------------------------------------------------ may a backup be reused


FILES = {"0001_a.expand.sql": "aa"}
RECORD = migration_record(FILES, ["t1"], intended_files=["0002_b.expand.sql"], intended_commands=["web"])
COMMIT = "c" * 40


def cmd(token, *, commit=COMMIT, phase="expand", service="web") -> CommandRun:
    return CommandRun(token, service, phase, "img", "id", "", commit, "h1", 0)


def test_a_backup_is_current_when_only_its_own_run_migrated_since():
    now_files = {**FILES, "0002_b.expand.sql": "bb"}
    assert changed_since(RECORD, FILES, [cmd("t1")], commit=COMMIT, phase="expand") is None
    assert changed_since(RECORD, now_files, [cmd("t1"), cmd("t2")], commit=COMMIT, phase="expand") is None


@pytest.mark.parametrize("files, runs, why", [
    ({**FILES, "0003_c.expand.sql": "cc"}, [cmd("t1")], "migrations ran since that this run did not mean to apply: 0003_c.expand.sql"),
    ({}, [cmd("t1")], "0001_a.expand.sql is no longer applied as it was then (a restore?)"),
    (FILES, [cmd("t0")], "the migration command runs differ from those it recorded (a restore?)"),
    (FILES, [cmd("t1"), cmd("t2", commit="d" * 40)], "web's migration command ran since (expand, commit dddddddddddd)"),
    (FILES, [cmd("t1"), cmd("t2", phase="contract")], "web's migration command ran since (contract, commit cccccccccccc)"),
    (FILES, [cmd("t1"), cmd("t2", service="api")], "api's migration command ran since (expand, commit cccccccccccc)"),
], ids=["other-file", "restored-below", "runs-restored", "other-commit", "other-phase", "other-service"])
def test_a_backup_is_out_of_date_when_anything_else_migrated(files, runs, why):
    assert changed_since(RECORD, files, runs, commit=COMMIT, phase="expand") == why


def test_a_table_recreated_since_the_backup_is_a_restore_a_new_table_is_not():
    record = migration_record(FILES, ["t1"], intended_files=(), intended_commands=(), tables={"public.notes": 16400})
    assert changed_since(record, FILES, [cmd("t1")], commit=COMMIT, phase="expand",
                         tables={"public.notes": 16400, "public.tags": 16500}) is None
    assert changed_since(record, FILES, [cmd("t1")], commit=COMMIT, phase="expand",
                         tables={"public.notes": 16600}) == "public.notes was dropped or recreated since (a restore?)"


def test_a_backup_without_a_record_is_never_reused():
    assert "records no migration state" in changed_since({}, {}, [], commit=COMMIT, phase="expand")
