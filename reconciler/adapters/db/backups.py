"""Pre-deploy backups: dump, verify, list, prune.

A backup is ``<store>/<db>/<UTC time>_<commit12>_pre-deploy.dump`` (``pg_dump
-Fc -Z1``: about twice as fast as the default compression for a 3% larger
file) with a JSON sidecar of the same name ending ``.json``.  The sidecar is
written last, so a dump without one is incomplete and never listed; it says
``verified`` once the dump restored to nowhere (``mark_verified``).

The sidecar also records the migration state at backup time (what the
tracking table held, which migration command runs there had been) and what
the run meant to apply.  A retry of the same commit and phase reuses the
backup while nothing but that run's own migrations ran since (``reusable``):
it is still the state before this commit, and a second dump of a large
database per retry would fill the disk.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg

from reconciler.adapters.db.connection import database_name, redacted, tool, tool_env
from reconciler.errors import BackupFailed

_CHUNK = 1 << 20
_NAME_RE = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z)_([0-9a-f]{1,12}|nocommit)_pre-deploy\.dump$")


@dataclass(frozen=True)
class Backup:
    """One verified-or-not dump and what its sidecar says about it."""

    path: pathlib.Path
    database: str
    commit: str
    environment: str
    size: int
    duration: float  # seconds pg_dump took
    sha256: str
    server_version: str
    created: str  # ISO 8601, UTC
    phase: str = "pre-deploy"  # what it was taken before: expand, contract, restore, pre-deploy (older sidecars)
    verified: bool = False  # restored to nowhere after it was written
    # Migration state at backup time and what the run meant to apply (see
    # ``reusable``).  Not compared: a dict would make the record unhashable,
    # and the file and its hash already say which backup this is.
    migrations: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def sidecar(self) -> pathlib.Path:
        return _sidecar_of(self.path)

    @classmethod
    def load(cls, sidecar: pathlib.Path) -> "Backup":
        data = json.loads(sidecar.read_text())
        dump = sidecar.with_name(sidecar.name[: -len(".json")])
        # Fields with a default were added later: older sidecars lack them.
        fields = {f.name for f in dataclasses.fields(cls)} - {"path"}
        return cls(path=dump, **{k: data[k] for k in fields if k in data})


def backup(dsn: str, store_dir: pathlib.Path, *, commit: str, environment: str,
           phase: str = "pre-deploy", migrations: dict | None = None) -> Backup:
    """Dump the database to the store, streamed, hashed while written.

    Raises BackupFailed naming the cause (pg_dump's own message, a full disk)
    and leaves no partial file behind.
    """
    db = database_name(dsn)
    target_dir = pathlib.Path(store_dir) / db
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupFailed(f"cannot create backup directory {target_dir}: {exc}") from exc
    server_version = _server_version(dsn)
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"
    final = target_dir / f"{stamp}_{(commit or 'nocommit')[:12]}_pre-deploy.dump"
    started = time.monotonic()
    sha, size = _dump_to(dsn, final)
    duration = round(time.monotonic() - started, 3)
    result = Backup(path=final, database=db, commit=commit, environment=environment, size=size,
                    duration=duration, sha256=sha, server_version=server_version,
                    created=now.isoformat(), phase=phase, migrations=dict(migrations or {}))
    try:
        _write_sidecar(result)
    except OSError as exc:
        final.unlink(missing_ok=True)
        raise BackupFailed(f"writing {result.sidecar} failed: {exc}") from exc
    return result


def mark_verified(item: Backup) -> Backup:
    """Record in the sidecar that ``item`` verified (call after ``verify``)."""
    done = dataclasses.replace(item, verified=True)
    try:
        _write_sidecar(done)
    except OSError as exc:
        raise BackupFailed(f"writing {item.sidecar} failed: {exc}") from exc
    return done


def _write_sidecar(item: Backup) -> None:
    sidecar = {k: v for k, v in dataclasses.asdict(item).items() if k != "path"}
    _write_atomic(item.sidecar, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())


def verify(item: Backup) -> None:
    """Check the file against its sidecar, then restore it to nowhere.

    ``pg_restore -l`` only reads the table of contents and passes truncated
    archives; ``pg_restore -f /dev/null`` reads every block.
    """
    try:
        sha, size = _hash_file(item.path)
    except OSError as exc:
        raise BackupFailed(f"backup {item.path} unreadable: {exc}") from exc
    if size != item.size or sha != item.sha256:
        raise BackupFailed(f"backup {item.path} does not match its sidecar: size {size} "
                           f"(recorded {item.size}), sha256 {sha} (recorded {item.sha256})")
    result = subprocess.run([tool("pg_restore"), "-f", os.devnull, str(item.path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupFailed(f"backup {item.path} does not restore: "
                           f"{result.stderr.strip() or 'pg_restore exit ' + str(result.returncode)}")


def list_backups(store_dir: pathlib.Path, db: str | None = None) -> tuple[Backup, ...]:
    """Complete backups (those with a sidecar), oldest first."""
    store = pathlib.Path(store_dir)
    if not store.is_dir():
        return ()
    dirs = [store / db] if db else sorted(p for p in store.iterdir() if p.is_dir())
    found = []
    for directory in dirs:
        if not directory.is_dir():
            continue
        for sidecar in directory.glob("*_pre-deploy.dump.json"):
            if not _NAME_RE.match(sidecar.name[: -len(".json")]):
                continue
            try:
                found.append(Backup.load(sidecar))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged sidecar: not a usable backup, left for a human
    return tuple(sorted(found, key=lambda b: (b.created, b.path.name)))


def prune_backups(store_dir: pathlib.Path, keep: int, *, database: str | None = None,
                  environment: str | None = None) -> tuple[Backup, ...]:
    """Delete all but the newest ``keep`` backups of each database; return the deleted.

    With ``database``, only that database's backups are considered, and with
    ``environment`` only that environment's: a run prunes what it backs up,
    with its own environment's ``keep``, never another database's or
    environment's backups (each keeps its own rollback targets).
    """
    if keep < 1:
        raise ValueError("keep at least one backup")
    removed = []
    by_db: dict[str, list[Backup]] = {}
    for item in list_backups(store_dir, database):
        if environment is None or item.environment == environment:
            by_db.setdefault(item.path.parent.name, []).append(item)
    for items in by_db.values():
        for item in items[:-keep]:
            # Sidecar first: a dump without one is already not a backup.
            item.sidecar.unlink(missing_ok=True)
            item.path.unlink(missing_ok=True)
            removed.append(item)
    return tuple(removed)


def table_oids(dsn: str) -> dict[str, int]:
    """``schema.table`` -> oid of every table in the database.  A restore
    (``pg_restore --clean``) drops and recreates the tables it holds, so their
    oids change: how a backup notices that the database was put back since."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            rows = conn.execute("SELECT n.nspname, c.relname, c.oid::bigint FROM pg_class c "
                                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
                                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                                "AND n.nspname NOT LIKE 'pg_toast%%'").fetchall()
    except psycopg.Error as exc:
        raise BackupFailed(f"cannot reach the database {redacted(dsn)}: {exc}".strip()) from exc
    return {f"{schema}.{name}": int(oid) for schema, name, oid in rows}


def migration_record(files: dict[str, str], run_tokens: Sequence[str], *, intended_files: Iterable[str],
                     intended_commands: Iterable[str], tables: dict[str, int] | None = None) -> dict:
    """What a sidecar keeps of the migration state: the applied files (name ->
    sha256), the command runs so far (a count and a hash of their tokens: a
    sidecar stays small however many deploys ran), the tables' oids, and
    what the run meant to apply."""
    return {"files": dict(sorted(files.items())), "runs": len(run_tokens), "runs_sha256": _tokens_hash(run_tokens),
            "tables": dict(sorted((tables or {}).items())),
            "intended_files": sorted(intended_files), "intended_commands": sorted(intended_commands)}


def changed_since(recorded: dict, files: dict[str, str], runs: Sequence, *, commit: str, phase: str,
                  tables: dict[str, int] | None = None) -> str | None:
    """Why the database is no longer in the state a backup recorded, apart
    from the migrations the backed-up run meant to apply itself; None when it
    is.  ``files`` are the applied files now (name -> sha256), ``runs`` the
    command runs now, in order (``CommandRun``), ``tables`` the tables' oids
    now (a table the run's migrations added is fine; one recreated is not)."""
    if not recorded or "files" not in recorded:
        return "it records no migration state (taken by an older reconciler)"
    moved = sorted(t for t, oid in recorded.get("tables", {}).items() if (tables or {}).get(t) != oid)
    if moved:
        return f"{moved[0]} was dropped or recreated since (a restore?)"
    for name, sha in recorded["files"].items():
        if files.get(name) != sha:
            return f"{name} is no longer applied as it was then (a restore?)"
    others = sorted(set(files) - set(recorded["files"]) - set(recorded.get("intended_files", ())))
    if others:
        return "migrations ran since that this run did not mean to apply: " + ", ".join(others)
    count = recorded.get("runs", 0)
    if len(runs) < count or _tokens_hash([r.token for r in runs[:count]]) != recorded.get("runs_sha256"):
        return "the migration command runs differ from those it recorded (a restore?)"
    for run in runs[count:]:
        if run.commit != commit or run.phase != phase or run.service not in recorded.get("intended_commands", ()):
            return f"{run.service}'s migration command ran since ({run.phase}, commit {run.commit[:12]})"
    return None


def _tokens_hash(tokens: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(tokens).encode()).hexdigest()


def _dump_to(dsn: str, final: pathlib.Path) -> tuple[str, int]:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    tmp = pathlib.Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen([tool("pg_dump"), "-Fc", "-Z1", "--no-password"],
                                stdout=subprocess.PIPE, stderr=errors, env=tool_env(dsn))
        assert proc.stdout is not None
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := proc.stdout.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            code = proc.wait()
            if code != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip()
                raise BackupFailed(f"pg_dump of {redacted(dsn)} failed (exit {code}): {message}")
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise BackupFailed(f"writing backup {final} failed: {exc.strerror or exc}") from exc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            tmp.unlink(missing_ok=True)
    return digest.hexdigest(), size


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp_name, path)
        _fsync_dir(path.parent)
    finally:
        pathlib.Path(tmp_name).unlink(missing_ok=True)


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: pathlib.Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _server_version(dsn: str) -> str:
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])
    except psycopg.Error as exc:
        raise BackupFailed(f"cannot reach the database {redacted(dsn)}: {exc}".strip()) from exc


def _sidecar_of(dump: pathlib.Path) -> pathlib.Path:
    return dump.with_name(dump.name + ".json")
