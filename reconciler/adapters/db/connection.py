"""Connection details shared by the adapter: DSN parsing and client tool env.

The PostgreSQL client tools get the connection through ``PG*`` environment
variables rather than ``--dbname=DSN`` so the password never appears in a
process listing.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reconciler.errors import DatabaseError

_ENV_KEYS = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}


def database_name(dsn: str) -> str:
    name = conninfo_to_dict(dsn).get("dbname")
    if not name:
        raise DatabaseError("the database DSN names no database")
    return str(name)


def with_database(dsn: str, dbname: str) -> str:
    """The same connection, to another database on the same server."""
    return make_conninfo(dsn, dbname=dbname)


def redacted(dsn: str) -> str:
    """The DSN as it may be printed: everything but the password."""
    params = conninfo_to_dict(dsn)
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "password")


def tool_env(dsn: str) -> dict[str, str]:
    """Environment for pg_dump/psql/pg_restore that connects them to ``dsn``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in conninfo_to_dict(dsn).items():
        if key in _ENV_KEYS:
            env[_ENV_KEYS[key]] = str(value)
        elif value is not None:
            raise DatabaseError(f"unsupported DSN parameter for the client tools: {key}")
    return env


def tool(name: str) -> str:
    """Path of a client tool, the newest installed major version first.

    Debian's /usr/bin wrappers pick a version by cluster configuration; a
    pg_dump older than the server refuses to dump, so take the newest.
    """
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(pathlib.Path(p).parts[-3]))
    if found:
        return found[-1]
    path = shutil.which(name)
    if not path:
        raise DatabaseError(f"{name} not found; install the PostgreSQL client (make setup)")
    return path
