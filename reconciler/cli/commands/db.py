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
import pathlib
import secrets

from reconciler.cli import exitcodes
from reconciler.cli.commands._common import add_env_argument, add_identity_arguments, add_repo_argument, choose_env, finish
from reconciler.errors import StalledError


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
        add_env_argument(command, "environment whose database to use")
        add_repo_argument(command)
        command.add_argument("--rev", "--commit", dest="rev", default="HEAD", help="commit whose database block to use (default: HEAD)")
        add_identity_arguments(command)  # the SSH key, when the database is reached through database.via_host
    for command in (listing, restore, drill):
        command.add_argument("--store", help="backup store (default: $RECONCILER_BACKUP_DIR or /var/lib/reconciler/backups)")


def run(args) -> int:
    if args.db_command == "backups":
        return _backups(args)
    if args.db_command == "restore":
        return _restore(args)
    environment, revision, pins = _load(args)
    with _database(args, environment, pins) as dsn:
        args.loaded = (environment, revision, dsn)
        return _drill(args)


@contextlib.contextmanager
def _database(args, environment, pins: bytes | None):
    """The environment's DSN for this command, tunnelled through
    ``database.via_host``'s pinned SSH connection when it names one."""
    from reconciler.adapters import fleet
    from reconciler.engine.target import pinned_keys_file
    from reconciler.engine.dbphase import database_connection

    hosts = {}
    via = environment.database.via_host
    if via:
        if not args.identity:
            raise StalledError(f"database.via_host is {via}: pass --identity FILE (or set $RECONCILER_IDENTITY, or identity "
                               f"in the settings file) to reach it over SSH")
        if pins is None:
            raise StalledError(f"{environment.known_hosts} is missing: pin {via}'s key there")
        hosts = fleet.open_hosts([environment.host(via)], identity_file=args.identity, known_hosts_file=pinned_keys_file(pins),
                                 timeout=args.timeout)
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
    choose_env(args)
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


def _restore(args) -> int:
    """Through the engine: the environment's lock, a journal, a fresh backup
    first (the way back), the restore, and an attempt recorded in git."""
    from reconciler.adapters import fleet
    from reconciler.cli.commands import _engine
    from reconciler.cli.commands._agent import git_dir
    from reconciler.engine.recording import cli_actor
    from reconciler.engine.restore import find_backup
    from reconciler.engine.run import Context, Request, run as run_engine

    environment, revision, pins = _load(args)
    store = _store(args)
    item = find_backup(store, args.backup)

    def show(plan) -> None:
        print(f"restore {item.path}\n  taken {item.created} at commit {item.commit[:12]} ({item.environment})\n"
              f"  into {environment.database.name or 'the database'} of {environment.name}\n"
              "  everything written since then will be gone (a fresh backup is taken first)")

    confirm = _engine.asker(args, "restore", "restore this backup?", show)

    def open_hosts(env, known_hosts_file):
        # Only the host the database is reached through, if any: a restore changes no container.
        via = env.database.via_host if env.database else None
        if not via:
            return {}
        if not args.identity:
            raise StalledError(f"database.via_host is {via}: pass --identity FILE (or set $RECONCILER_IDENTITY, or identity "
                               f"in the settings file) to reach it over SSH")
        return fleet.open_hosts([env.host(via)], identity_file=args.identity, known_hosts_file=known_hosts_file,
                                timeout=args.timeout)

    ctx = Context(repo=git_dir(args.repo), state_dir=_engine.state_dir_for(args), open_hosts=open_hosts,
                  close_hosts=fleet.close_hosts, confirm=confirm, backup_dir=store)
    result = run_engine(ctx, Request(environment.name, "restore", commit=revision, trigger="cli", actor=cli_actor(),
                                     backup=str(item.path)))
    if result.result == "declined":
        print("db restore: cancelled, nothing changed")
        return exitcodes.ERROR
    code = finish(result, "restore")
    if result.result != "restored":
        raise StalledError(f"db restore: {result.result} ({result.reason}): {result.message}")
    database = (gitlog_latest(args, revision, environment.name) or {}).get("database", {})
    print(f"fresh backup {database.get('backup')} verified (restore it to undo this)")
    print(f"restored {item.path.name} in {database.get('restore', {}).get('seconds', 0):.1f}s")
    print(f"recorded in git: note on {revision[:12]} ({environment.name})")
    return code


def gitlog_latest(args, revision: str, env: str) -> dict | None:
    from reconciler.adapters import gitlog

    found = gitlog.latest(gitlog.open_repo(args.repo), revision, env)
    return dict(found.details) if found else None


def _drill(args) -> int:
    import psycopg
    from psycopg import sql as pgsql

    from reconciler.adapters.db import list_backups, verify
    from reconciler.adapters.db.connection import database_name, with_database
    from reconciler.engine.restore import restore_into

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
        seconds = restore_into(with_database(dsn, scratch), item.path)  # the drill changes nothing of the environment's
    finally:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(scratch)))
    print(f"drill: restored {item.path.name} ({item.size / 1e6:.2f} MB, taken {item.created[:19]}) "
          f"into a scratch database in {seconds:.1f}s: the recovery time to expect for {args.env}")
    return 0
