"""The sandbox's own PostgreSQL cluster, the database the demo deploys migrate.

A cluster of its own (not Debian's ``main``): ``initdb``/``pg_ctl`` run as the
``postgres`` user with everything under ``<state_dir>/postgres``::

    <state_dir>/postgres/           root 0755 (postgres must traverse it)
        data/                       PGDATA, postgres 0700
        run/                        the unix socket, postgres 0755
        password                    the ``reconciler`` role's password, root 0600
        server.log

It listens on 127.0.0.1 and, when the sandbox bridge address 10.213.0.1
exists on this machine, on that too, so containers on the fleet reach it.
``ensure_cluster`` is idempotent: it re-creates what is missing, restarts
when the listen addresses changed (the bridge appeared or went), and resets
the password when its file was lost.  After a crash it removes a
``postmaster.pid`` whose pid is gone or now belongs to another program
(``pg_ctl`` would take that one for a running server), and a start that
fails is retried once after an immediate stop.  Needs root (or to run as
postgres).
"""

from __future__ import annotations

import errno
import glob
import os
import pathlib
import pwd
import secrets
import shutil
import socket
import subprocess

from reconciler.errors import SandboxError
from reconciler.sandbox import procs

BRIDGE_ADDRESS = "10.213.0.1"
BRIDGE_NETWORK = "10.213.0.0/16"
DEFAULT_PORT = 5433
ROLE = "reconciler"
DATABASE = "demo"
_CONF_NAME = "reconciler.conf"
# pg_ctl -w waits this long for a start: crash recovery plus a first
# checkpoint while the engines start on two loaded cores, not the idle 1 s.
START_TIMEOUT = 120
# Unix socket paths are limited to 107 bytes on Linux, including the file name.
_MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.65535") - 1


def ensure_cluster(state_dir: pathlib.Path, *, port: int = DEFAULT_PORT) -> str:
    """Create (if needed), configure and start the cluster; return its DSN.

    Safe to call again at any time; survives a half-made data directory, a
    stale pid file and a lost password file.
    """
    layout = _Layout(pathlib.Path(state_dir))
    bindir = _bindir()
    layout.prepare()
    if not (layout.data / "PG_VERSION").exists():
        # A data directory without PG_VERSION is an initdb that died half-way.
        if layout.data.exists():
            shutil.rmtree(layout.data)
        layout.make_postgres_dir(layout.data, 0o700)
        _as_postgres([str(bindir / "initdb"), "-D", str(layout.data), "-U", "postgres",
                      "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8",
                      "--locale=C.UTF-8"], what="initdb")
        with open(layout.data / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude_if_exists '{_CONF_NAME}'\n")
    changed = _write_config(layout, port)
    clear_stale_pidfile(layout.data)
    clear_stale_socket_locks(layout.run, layout.data)
    running = _is_running(bindir, layout)
    if running and changed:
        _pg_ctl(bindir, layout, "restart")
    elif not running:
        procs.retry_once("PostgreSQL", lambda: _pg_ctl(bindir, layout, "start"),
                         lambda: _start_again(bindir, layout))
    elif changed:
        _pg_ctl(bindir, layout, "reload")
    password = _ensure_role_and_database(layout, port)
    return f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/{DATABASE}"


def stop_cluster(state_dir: pathlib.Path) -> None:
    """Stop the cluster if it runs; keep its data.  Safe to call twice."""
    layout = _Layout(pathlib.Path(state_dir))
    if not (layout.data / "PG_VERSION").exists():
        return
    bindir = _bindir()
    if _is_running(bindir, layout):
        _pg_ctl(bindir, layout, "stop")


def remove_cluster(state_dir: pathlib.Path) -> None:
    """Stop the cluster and delete its files (data and password)."""
    stop_cluster(state_dir)
    shutil.rmtree(_Layout(pathlib.Path(state_dir)).root, ignore_errors=True)


def listen_addresses() -> tuple[str, ...]:
    """127.0.0.1, plus the sandbox bridge address when this machine has it."""
    return ("127.0.0.1", BRIDGE_ADDRESS) if _address_exists(BRIDGE_ADDRESS) else ("127.0.0.1",)


class _Layout:
    def __init__(self, state_dir: pathlib.Path) -> None:
        self.root = state_dir.absolute() / "postgres"
        self.data = self.root / "data"
        self.run = self.root / "run"
        self.password = self.root / "password"
        self.log = self.root / "server.log"

    def prepare(self) -> None:
        if len(str(self.run)) > _MAX_SOCKET_DIR:
            raise SandboxError(f"state directory path too long for a unix socket: {self.run}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        # The server runs as postgres: every directory above ours must let it through.
        for parent in self.root.parents:
            if not os.stat(parent).st_mode & 0o001:
                raise SandboxError(
                    f"{parent} is not traversable by the postgres user (mode "
                    f"{oct(os.stat(parent).st_mode & 0o777)}); choose another state directory")
        self.make_postgres_dir(self.run, 0o755)
        if not self.log.exists():
            self.log.touch()
        _chown_postgres(self.log)

    @staticmethod
    def make_postgres_dir(path: pathlib.Path, mode: int) -> None:
        path.mkdir(exist_ok=True)
        _chown_postgres(path)
        path.chmod(mode)


def _write_config(layout: _Layout, port: int) -> bool:
    """Write our settings and pg_hba.conf; return whether anything changed."""
    conf = (
        "# Written by reconciler.sandbox.postgres; rewritten on every ensure_cluster.\n"
        f"listen_addresses = '{','.join(listen_addresses())}'\n"
        f"port = {port}\n"
        f"unix_socket_directories = '{layout.run}'\n"
        "fsync = on\n"
    )
    hba = (
        "# Written by reconciler.sandbox.postgres.\n"
        "local all postgres peer\n"
        f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
        f"host all {ROLE} {BRIDGE_NETWORK} scram-sha-256\n"
    )
    changed = False
    for path, text in ((layout.data / _CONF_NAME, conf), (layout.data / "pg_hba.conf", hba)):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            _chown_postgres(path)
            changed = True
    return changed


def _ensure_role_and_database(layout: _Layout, port: int) -> str:
    password = _read_or_make_password(layout.password)
    # The password goes through stdin so it never shows in a process listing.
    escaped = password.replace("'", "''")
    sql = f"""
SELECT 'CREATE ROLE {ROLE} LOGIN CREATEDB'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') \\gexec
ALTER ROLE {ROLE} LOGIN CREATEDB PASSWORD '{escaped}';
SELECT 'CREATE DATABASE {DATABASE} OWNER {ROLE}'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}') \\gexec
"""
    _as_postgres([str(_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(layout.run),
                  "-p", str(port), "-d", "postgres"], what="creating role and database", stdin=sql)
    return password


def _read_or_make_password(path: pathlib.Path) -> str:
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    password = secrets.token_urlsafe(24)  # URL-safe, so the DSN needs no quoting
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    path.chmod(0o600)
    return password


def clear_stale_pidfile(data: pathlib.Path) -> bool:
    """Remove ``postmaster.pid`` unless it names a live postgres of this data
    directory; return whether it was removed.

    After a crash the pid may belong to another program by now; pg_ctl (a
    kill(pid, 0)) would report that one as our running server, and the
    postmaster would refuse to start over its lock file.
    """
    pidfile = data / "postmaster.pid"
    try:
        first = pidfile.read_text().splitlines()[:1]
    except FileNotFoundError:
        return False
    pid = int(first[0]) if first and first[0].strip().isdigit() else None
    if pid is None:
        return False  # being written by a postmaster starting this instant
    if procs.alive(pid) and _works_in(pid, data):
        return False
    pidfile.unlink(missing_ok=True)
    return True


def clear_stale_socket_locks(run: pathlib.Path, data: pathlib.Path) -> list[str]:
    """Remove ``.s.PGSQL.<port>.lock`` files whose postmaster is gone.

    After a crash the lock's pid may belong to another process by now, and a
    new postmaster refuses to start over it ("Is another postmaster (PID N)
    using socket file"); a live postgres of this data directory keeps its lock."""
    removed = []
    for lock in sorted(run.glob(".s.PGSQL.*.lock")):
        try:
            first = lock.read_text().splitlines()[:1]
        except FileNotFoundError:
            continue
        pid = int(first[0]) if first and first[0].strip().isdigit() else None
        if pid is not None and procs.alive(pid) and _works_in(pid, data):
            continue
        lock.unlink(missing_ok=True)
        socket = run / lock.name[: -len(".lock")]
        socket.unlink(missing_ok=True)  # the socket of the dead server goes with its lock
        removed.append(lock.name)
    return removed


def _works_in(pid: int, data: pathlib.Path) -> bool:
    # The postmaster chdirs to its data directory: a test that no symlink or
    # relative -D in its command line can fool.
    try:
        return os.path.samefile(f"/proc/{pid}/cwd", data)
    except OSError:
        return False


def _start_again(bindir: pathlib.Path, layout: _Layout) -> None:
    """After a failed start: stop whatever half-started, clear its pid file, start."""
    _as_postgres([str(bindir / "pg_ctl"), "stop", "-D", str(layout.data), "-m", "immediate", "-w", "-t", "30"],
                 what="pg_ctl stop", check=False)
    clear_stale_pidfile(layout.data)
    clear_stale_socket_locks(layout.run, layout.data)
    _pg_ctl(bindir, layout, "start")


def _is_running(bindir: pathlib.Path, layout: _Layout) -> bool:
    # pg_ctl status: 0 running, 3 not running (a stale pid file counts as not running).
    result = _as_postgres([str(bindir / "pg_ctl"), "status", "-D", str(layout.data)],
                          what="pg_ctl status", check=False)
    return result.returncode == 0


def _pg_ctl(bindir: pathlib.Path, layout: _Layout, action: str) -> None:
    argv = [str(bindir / "pg_ctl"), action, "-D", str(layout.data), "-l", str(layout.log)]
    if action in ("start", "restart", "stop"):
        argv += ["-w", "-t", str(START_TIMEOUT)]
    if action in ("restart", "stop"):
        argv += ["-m", "fast"]
    try:
        _as_postgres(argv, what=f"pg_ctl {action}")
    except SandboxError as exc:
        tail = layout.log.read_text(errors="replace").splitlines()[-10:] if layout.log.exists() else []
        waited = f" (waited up to {START_TIMEOUT}s for it to accept connections)" if action in ("start", "restart") else ""
        raise SandboxError(f"{exc}{waited}\n{layout.log} ends with:\n" + "\n".join(tail)) from None


def _as_postgres(argv: list[str], *, what: str, stdin: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    elif pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        raise SandboxError("the sandbox PostgreSQL cluster must be managed as root or postgres")
    # cwd=/ because postgres may not be able to read the caller's directory.
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd="/")
    if check and result.returncode != 0:
        raise SandboxError(f"{what} failed (exit {result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()}")
    return result


def _chown_postgres(path: pathlib.Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _bindir() -> pathlib.Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(pathlib.Path(p).parts[-3]))
    if not candidates:
        raise SandboxError("PostgreSQL server binaries not found; run `make setup`")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise SandboxError("no postgres user; run `make setup`") from None
    return pathlib.Path(candidates[-1]).parent


def _address_exists(address: str) -> bool:
    # Binding succeeds only for an address assigned to this machine.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True
