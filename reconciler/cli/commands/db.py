"""reconciler db: list backups, restore one on purpose, drill a restore.

``restore`` is the only command that moves a database backwards; it asks
first (unless ``--yes``), takes a fresh verified backup so the restore can
itself be undone, restores in one transaction (a failure leaves the database
as it was), and records the restore in git on the environment's commit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import secrets
import subprocess
import sys
import time

HELP = "database backups: list them, restore one (asks first), drill a restore into a scratch database"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    listing = sub.add_parser("backups", help="list the verified-at-creation backups in the store")
    listing.add_argument("--env", help="only this environment's backups")
    listing.add_argument("--json", action="store_true")
    restore = sub.add_parser("restore", help="restore BACKUP into the environment's database (takes a fresh backup first)")
    restore.add_argument("backup", metavar="BACKUP", help="a backup's path or file name (see `reconciler db backups`)")
    restore.add_argument("--yes", action="store_true", help="restore without asking")
    drill = sub.add_parser("drill", help="restore the newest backup into a scratch database and report the time it took")
    for command in (restore, drill):
        command.add_argument("--env", required=True, help="environment whose database to use")
        command.add_argument("--repo", default=os.environ.get("RECONCILER_REPO", "."), help="environment repository (default: .)")
        command.add_argument("--rev", "--commit", dest="rev", default="HEAD", help="commit whose database block to use (default: HEAD)")
        command.add_argument("--identity", default=os.environ.get("RECONCILER_IDENTITY"),
                             help="SSH key, when the database is reached through database.via_host")
    for command in (listing, restore, drill):
        command.add_argument("--store", help="backup store (default: $RECONCILER_BACKUP_DIR or /var/lib/reconciler/backups)")


def run(args) -> int:
    if args.db_command == "backups":
        return _backups(args)
    environment, revision, pins = _load(args)
    with _database(args, environment, pins) as dsn:
        args.loaded = (environment, revision, dsn)
        return {"restore": _restore, "drill": _drill}[args.db_command](args)


@contextlib.contextmanager
def _database(args, environment, pins: bytes | None):
    """The environment's DSN for this command, tunnelled through
    ``database.via_host``'s pinned SSH connection when it names one."""
    from reconciler.adapters import fleet
    from reconciler.engine.target import pinned_keys_file
    from reconciler.engine.dbphase import database_connection
    from reconciler.errors import StalledError

    hosts = {}
    via = environment.database.via_host
    if via:
        if not args.identity:
            raise StalledError(f"database.via_host is {via}: pass --identity FILE (or set RECONCILER_IDENTITY) to reach it over SSH")
        if pins is None:
            raise StalledError(f"{environment.known_hosts} is missing: pin {via}'s key there")
        hosts = fleet.open_hosts([environment.host(via)], identity_file=args.identity, known_hosts_file=pinned_keys_file(pins))
    try:
        with database_connection(environment.database, hosts) as dsn:
            yield dsn
    finally:
        if hosts:
            fleet.close_hosts(hosts)


def _store(args) -> pathlib.Path:
    from reconciler.engine.dbphase import backup_dir

    return pathlib.Path(args.store) if args.store else backup_dir()


def _load(args):
    """The environment at the commit, and its pinned keys (for via_host)."""
    from reconciler.core import schema
    from reconciler.adapters import source
    from reconciler.errors import StalledError

    revision = source.head_commit(args.repo, args.rev)
    snapshot = source.snapshot_commit(args.repo, revision)
    if args.env not in schema.list_environments(snapshot):
        raise StalledError(f"{args.repo}: no environment {args.env!r} at {revision[:12]}")
    environment = schema.load_environment(snapshot, args.env)
    if environment.database is None:
        raise StalledError(f"environment {args.env} declares no database at {revision[:12]}: add a database block")
    return environment, revision, snapshot.files.get(environment.known_hosts)


def _backups(args) -> int:
    from reconciler.adapters.db import list_backups

    found = [b for b in list_backups(_store(args)) if not args.env or b.environment == args.env]
    if args.json:
        print(json.dumps([{**{k: getattr(b, k) for k in ("database", "commit", "environment", "size", "duration",
                                                          "sha256", "server_version", "created")},
                           "path": str(b.path)} for b in found], indent=2))
        return 0
    if not found:
        print(f"no backups in {_store(args)}" + (f" for {args.env}" if args.env else ""))
        return 0
    for b in found:
        print(f"{b.created[:19]}  {b.environment:<12} {b.database:<16} {b.commit[:12]:<12} "
              f"{b.size / 1e6:8.2f} MB  {b.path}")
    return 0


def _find(store: pathlib.Path, name: str):
    from reconciler.adapters.db import list_backups
    from reconciler.errors import StalledError

    for item in list_backups(store):
        if str(item.path) == name or item.path.name == name or str(item.path.resolve()) == str(pathlib.Path(name).resolve()):
            return item
    raise StalledError(f"no backup {name!r} in {store} (one with a sidecar); list them with `reconciler db backups`")


def _restore(args) -> int:
    from reconciler.adapters.db import verify
    from reconciler.adapters.db.connection import database_name, redacted
    from reconciler.engine.dbphase import take_verified_backup
    from reconciler.errors import StalledError

    environment, revision, dsn = args.loaded
    store = _store(args)
    item = _find(store, args.backup)
    if item.database != database_name(dsn):
        raise StalledError(f"{item.path.name} is a backup of database {item.database}, but {args.env} uses "
                           f"{database_name(dsn)}: pick one of its own backups")
    verify(item)  # before anything is touched: a bad file must not replace good data
    print(f"restore {item.path}\n  taken {item.created} at commit {item.commit[:12]} ({item.environment})\n"
          f"  into {redacted(dsn)}\n  everything written since then will be gone (a fresh backup is taken first)")
    if not args.yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise StalledError("db restore: not on a terminal; pass --yes to restore without asking")
        if input("restore this backup? [y/N] ").strip().lower() not in ("y", "yes"):
            print("db restore: cancelled, nothing changed")
            return 1
    fresh = take_verified_backup(dsn, environment, revision, store)
    print(f"fresh backup {fresh.backup} verified (restore it to undo this)")
    seconds = restore_into(dsn, item.path)
    print(f"restored {item.path.name} into {database_name(dsn)} in {seconds:.1f}s")
    _record(args, environment.name, revision, {"backup": str(item.path), "backup_commit": item.commit,
                                                "fresh_backup": fresh.backup, "seconds": seconds})
    return 0


def restore_into(dsn: str, dump: pathlib.Path) -> float:
    """``pg_restore --clean --if-exists`` in one transaction; return the seconds it took."""
    from reconciler.adapters.db.connection import database_name, tool, tool_env
    from reconciler.adapters.db import BackupFailed

    started = time.monotonic()
    result = subprocess.run([tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
                             "--exit-on-error", "--no-password", f"--dbname={database_name(dsn)}", str(dump)],
                            capture_output=True, text=True, env=tool_env(dsn))
    if result.returncode != 0:
        raise BackupFailed(f"pg_restore of {dump} failed; the database was left as it was (one transaction): "
                           f"{result.stderr.strip()}")
    return round(time.monotonic() - started, 3)


def _record(args, env: str, revision: str, restore: dict) -> None:
    """Add the restore to the environment's record in the commit's note."""
    from reconciler.adapters import gitlog

    repo = gitlog.open_repo(args.repo)
    record = dict(gitlog.env_record(repo, revision, env) or {"result": "restored", "hosts": []})
    now = time.time()
    record["restores"] = [*record.get("restores", []), {**restore, "at": now, "by": os.environ.get("USER", "?")}]
    record.setdefault("started", now)
    record.setdefault("finished", now)
    gitlog.write_note(repo, revision, env, record, gitlog.user_signature(repo))
    print(f"recorded in git: note on {revision[:12]} ({env})")


def _drill(args) -> int:
    import psycopg
    from psycopg import sql as pgsql

    from reconciler.adapters.db import list_backups, verify
    from reconciler.adapters.db.connection import database_name, with_database
    from reconciler.errors import StalledError

    environment, _, dsn = args.loaded
    found = list_backups(_store(args), database_name(dsn))
    if not found:
        raise StalledError(f"no backup of {database_name(dsn)} in {_store(args)} to drill with; deploy once first")
    item = found[-1]
    verify(item)
    scratch = f"reconciler_drill_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(scratch)))
    try:
        seconds = restore_into(with_database(dsn, scratch), item.path)
    finally:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(scratch)))
    print(f"drill: restored {item.path.name} ({item.size / 1e6:.2f} MB, taken {item.created[:19]}) "
          f"into a scratch database in {seconds:.1f}s: the recovery time to expect for {args.env}")
    return 0
