"""The deploy journal: what a reconcile is doing, on disk, crash-safe.

One JSON document per environment (``<state>/journal/<env>.json``), rewritten
whole on every record with write-temp, fsync, rename, fsync-directory, so a
reader (the restarted agent) sees either the previous record or the next one,
never half of one.  A record is written before and after every step: the
executor's ``report`` callback feeds it (``begin``/``done``/``failed``/
``rollback``/``restored``) and the container ids it touched are copied in
after each one, because they are what a rollback after a crash needs.

Phases: ``deploying`` -> ``rolling-back``? -> ``recording`` -> ``finished``.
A journal found in any phase but ``finished`` belongs to a run that died.

The same atomic writer keeps the per-environment status file
(``<state>/status/<env>.json``: lastAttemptedRevision, lastAppliedRevision,
the stalled commit and the last outcome), the agent's memory across restarts.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

PHASE_DEPLOYING = "deploying"
PHASE_ROLLING_BACK = "rolling-back"
PHASE_RECORDING = "recording"
PHASE_FINISHED = "finished"


SHARED_FILE_MODE = 0o644  # the agent writes, a pusher's `status` or `lock` reads: both must read it


def atomic_write_json(path: Path, document: Any, mode: int = SHARED_FILE_MODE) -> None:
    """Replace ``path`` with ``document`` so that a crash leaves old or new.

    The mode is set on the temporary file, before the rename: a chmod after
    it would leave a window in which a reader gets PermissionError instead of
    the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # secrets never go in these files
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any | None:
    """The document at ``path``, or None when there is none (or it is unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        # Only possible if something other than atomic_write_json wrote it;
        # treat as absent rather than wedge the agent forever.
        return None


@dataclass(frozen=True)
class TouchedRecord:
    """A journaled ``executor.Touched``: enough to put a host back as it was."""

    host: str
    service: str
    previous: str | None = None
    new: str | None = None
    new_was: str | None = None  # a restored (revived) container's retired name: undoing retires it again


@dataclass(frozen=True)
class JournalState:
    """A journal as read back from disk."""

    environment: str
    commit: str
    run_id: str
    phase: str
    started: float
    touched: tuple[TouchedRecord, ...] = ()
    records: tuple[dict, ...] = ()
    result: str | None = None
    failure: str | None = None
    previous_commit: str | None = None
    health: tuple[str, ...] | None = None  # host, service, check of a failed health gate
    operation: str = "deploy"
    trigger: str = ""
    actor: str = ""
    details: dict = field(default_factory=dict)  # what the run decided besides steps (the database phase's result)

    @property
    def finished(self) -> bool:
        return self.phase == PHASE_FINISHED

    def steps_done(self, step: str) -> set[tuple[str, str]]:
        """(host, service) pairs whose ``step`` completed."""
        return {(r["host"], r["service"]) for r in self.records if r.get("event") == "done" and r.get("step") == step}

    def serving(self) -> list[dict]:
        """What the run observed each host serve after its steps (``serving`` records)."""
        keys = ("at", "host", "service", "image", "container", "state", "revision")
        return [{k: r.get(k) for k in keys} for r in self.records if r.get("event") == "serving"]

    def steps_begun(self, step: str) -> set[tuple[str, str]]:
        return {(r["host"], r["service"]) for r in self.records if r.get("event") == "begin" and r.get("step") == step}


class Journal:
    """The journal of one environment's runs.

    ``hook`` is called with the record's name after each write; tests use it
    to kill the process at an exact step.
    """

    def __init__(self, state_dir: Path, environment: str, *, clock: Callable[[], float] = time.time, hook: Callable[[str], None] | None = None) -> None:
        self.path = Path(state_dir) / "journal" / f"{environment}.json"
        self.environment = environment
        self.clock = clock
        self.hook = hook
        self._lock = threading.Lock()  # the executor reports from worker threads
        self._doc: dict | None = None

    # ------------------------------------------------------------ reading
    def load(self) -> JournalState | None:
        doc = read_json(self.path)
        if not doc:
            return None
        return JournalState(
            environment=doc["environment"],
            commit=doc["commit"],
            run_id=doc["run_id"],
            phase=doc["phase"],
            started=doc["started"],
            touched=tuple(TouchedRecord(**t) for t in doc.get("touched", [])),
            records=tuple(doc.get("records", [])),
            result=doc.get("result"),
            failure=doc.get("failure"),
            previous_commit=doc.get("previous_commit"),
            health=tuple(doc["health"]) if doc.get("health") else None,
            operation=doc.get("operation", "deploy"),
            trigger=doc.get("trigger", ""),
            actor=doc.get("actor", ""),
            details=doc.get("details") or {},
        )

    def unfinished(self) -> JournalState | None:
        state = self.load()
        return state if state is not None and not state.finished else None

    # ------------------------------------------------------------ writing
    def begin(self, commit: str, *, previous_commit: str | None, touched: Iterable[TouchedRecord] = (),
              operation: str = "deploy", trigger: str = "", actor: str = "") -> str:
        """Open a run; ``touched`` carries over what an interrupted run changed."""
        run_id = f"{int(self.clock() * 1000)}-{os.getpid()}"
        with self._lock:
            self._doc = {
                "environment": self.environment,
                "commit": commit,
                "previous_commit": previous_commit,
                "run_id": run_id,
                "phase": PHASE_DEPLOYING,
                "started": self.clock(),
                "touched": [asdict(t) for t in touched],
                "records": [],
                "operation": operation,
                "trigger": trigger,
                "actor": actor,
            }
            self._write("begin-run")
        return run_id

    def record(self, event: str, **fields: Any) -> None:
        with self._lock:
            doc = self._require()
            entry = {"event": event, "at": self.clock()}
            entry.update({k: v for k, v in fields.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))})
            doc["records"].append(entry)
            self._write(f"{event}:{fields.get('step', '')}")

    def set_touched(self, touched: Iterable[TouchedRecord]) -> None:
        """Replace the touched list (called right after each step's record)."""
        with self._lock:
            doc = self._require()
            new = [asdict(t) for t in touched]
            if new != doc["touched"]:
                doc["touched"] = new
                self._write("touched")

    def phase(self, phase: str, **fields: Any) -> None:
        with self._lock:
            doc = self._require()
            doc["phase"] = phase
            doc.update(fields)
            self._write(f"phase:{phase}")

    def adopt(self) -> None:
        """Continue writing the journal of an interrupted run."""
        with self._lock:
            self._doc = read_json(self.path)

    def _require(self) -> dict:
        if self._doc is None:
            raise RuntimeError("journal: no run begun")
        return self._doc

    def _write(self, what: str) -> None:
        atomic_write_json(self.path, self._doc)
        if self.hook is not None:
            self.hook(what)


@dataclass(frozen=True)
class Status:
    """What the agent knows about an environment between runs (Flux's status)."""

    environment: str
    last_attempted: str | None = None
    last_applied: str | None = None
    stalled_commit: str | None = None  # failed health: not retried until a new commit
    result: str | None = None
    reason: str | None = None  # PascalCase, e.g. HealthCheckFailed
    message: str | None = None
    at: float | None = None
    extra: dict = field(default_factory=dict)


def status_path(state_dir: Path, environment: str) -> Path:
    return Path(state_dir) / "status" / f"{environment}.json"


def read_status(state_dir: Path, environment: str) -> Status:
    doc = read_json(status_path(state_dir, environment)) or {}
    known = {k: doc[k] for k in Status.__dataclass_fields__ if k in doc}
    known["environment"] = environment
    return Status(**known)


def write_status(state_dir: Path, status: Status) -> None:
    atomic_write_json(status_path(state_dir, status.environment), asdict(status))
