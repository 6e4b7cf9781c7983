"""The database phase is part of the plan, so `plan` shows it and the journal covers it."""

from __future__ import annotations

import dataclasses

from reconciler.core import report
from reconciler.core.model import Database, Migrations
from tests.test_plan import environment, web
from reconciler.core.plan import plan_deploy, plan_restore
from reconciler.core.plan_steps import Backup, CheckMigrations, Migrate, Pull, RestoreDatabase, Start


def test_a_migrating_service_gets_check_backup_migrate_before_any_container_step():
    svc = dataclasses.replace(web(), migrations=Migrations(path="/migrations"))
    env = dataclasses.replace(environment(svc), database=Database(dsn_file="/x", name="app"))
    plan = plan_deploy(env, {}, "c1")
    steps = [type(a) for a in plan.actions]
    first_container = next(i for i, a in enumerate(plan.actions) if isinstance(a, Start))
    assert steps[:first_container][-3:] == [CheckMigrations, Backup, Migrate]
    assert all(isinstance(a, Pull) for a in plan.actions[: first_container - 3])
    check, backup, migrate = plan.actions[first_container - 3: first_container]
    assert (check.host, check.service, check.phase) == (svc.hosts[0], svc.name, "expand")
    assert (backup.database, backup.required, backup.reuse) == ("app", True, True)
    assert "Backup" in report.plan_text(plan) and "database: verified backup of app" in report.plan_text(plan)


def test_no_database_phase_for_a_commit_that_starts_nothing_and_backup_when_migrating_is_optional():
    env = dataclasses.replace(environment(web()), database=Database(dsn_file="/x", backup="when-migrating"))
    plan = plan_deploy(env, {}, "c1")
    assert not any(isinstance(a, (CheckMigrations, Backup, Migrate)) for a in plan.actions)
    always = dataclasses.replace(env, database=Database(dsn_file="/x"))
    (backup,) = [a for a in plan_deploy(always, {}, "c1").actions if isinstance(a, Backup)]
    assert backup.required


def test_a_restore_takes_a_fresh_backup_first_that_is_never_a_reused_one():
    env = dataclasses.replace(environment(web()), database=Database(dsn_file="/x", name="app"))
    fresh, restore = plan_restore(env, "c1", "/b/x.dump").actions
    assert isinstance(fresh, Backup) and fresh.required and not fresh.reuse
    assert isinstance(restore, RestoreDatabase) and restore.backup == "/b/x.dump"
