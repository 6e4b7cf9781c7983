"""The database adapter: backups, migrations and their checks (PostgreSQL).

The only place reconciler talks to a database.  The pure parts (file names,
pragmas, the static allow-list check) live in ``reconciler.core.migrations``.
Errors: ``BackupFailed``, ``MigrationFailed``, ``DatabaseError`` (stalled),
``reconciler.core.migrations.MigrationError``/``MigrationRefused`` (stalled),
``reconciler.errors.LockHeld`` (waiting: another migration runs).
"""

from reconciler.adapters.db.backups import Backup, BackupFailed, backup, list_backups, mark_verified, prune_backups, verify
from reconciler.adapters.db.commands import command_runs
from reconciler.adapters.db.connection import DatabaseError
from reconciler.adapters.db.migrate import (
    AppliedMigration,
    MigrationFailed,
    applied_migrations,
    apply_expand,
    pending,
    read_migrations,
)
from reconciler.adapters.db.scratch import check_expand_on_scratch

__all__ = [
    "AppliedMigration",
    "Backup",
    "BackupFailed",
    "DatabaseError",
    "MigrationFailed",
    "applied_migrations",
    "apply_expand",
    "backup",
    "check_expand_on_scratch",
    "command_runs",
    "list_backups",
    "mark_verified",
    "pending",
    "prune_backups",
    "read_migrations",
    "verify",
]
