"""The database adapter: backups, migrations and their checks (PostgreSQL).

The only place reconciler talks to a database.  The pure parts (file names,
pragmas, the static allow-list check) live in ``reconciler.migrations``.
"""

from reconciler.db.backups import Backup, BackupFailed, backup, list_backups, prune_backups, verify
from reconciler.db.connection import DatabaseError

__all__ = [
    "Backup",
    "BackupFailed",
    "DatabaseError",
    "backup",
    "list_backups",
    "prune_backups",
    "verify",
]
