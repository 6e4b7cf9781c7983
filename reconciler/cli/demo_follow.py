"""Following the demo's agent: its log as readable lines, its notes in git as
the outcome of each push.

The agent writes JSON lines (``reconciler run --log-format json``); the demo
reads the new ones every few hundred milliseconds and prints those a person
watching a deploy cares about, with the seconds since the push.  Whether a
push is done is never guessed from the log: it is the typed attempt the
engine appended to the commit's note (``gitlog.attempts``), and the revert
commit on the branch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from reconciler.adapters import gitlog
from reconciler.core.record import Attempt
from reconciler.errors import StalledError

POLL = 0.25
# Final for the demo's purpose: the agent does not try the commit again by itself.
FINAL = ("deployed", "in-sync", "rolled-back", "refused", "failed", "superseded")

# The engine's own steps worth a line when they finish, and what to call them.
_DONE = {
    "Retire": "old container stopped (kept for a rollback)",
    "CheckHealth": "healthy",
}
# The database phase reports its work as steps of its own: the reason is the news.
_DATABASE = ("db-check", "db-backup", "db-migrate")
# Said by other lines (the db- ones say what the database steps did), or noise
# (every host pulls): no line of their own.
_QUIET = ("CheckMigrations", "Backup", "Migrate", "Pull", "Retire", "Start")


@dataclass
class LogTail:
    """The agent's log from ``offset`` on, a complete line at a time."""

    path: Path
    offset: int = 0
    _partial: bytes = b""

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = b""

    def events(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        out = []
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                doc = {"event": "output", "text": line.decode(errors="replace")}  # a traceback, a library's print
            if isinstance(doc, dict):
                out.append(doc)
        return out


def short_image(reference: str) -> str:
    """``registry/demo/app:2@sha256:...`` as ``demo/app:2``: the tag is for people."""
    return reference.split("@", 1)[0].split("/", 1)[-1]


def _trigger(reason: str) -> str:
    return "a push" if reason.startswith("ref:") else reason


def describe(event: dict) -> str | None:
    """One readable line for a log event worth showing, else None (pure)."""
    name = event.get("event", "")
    where = "/".join(p for p in (event.get("host"), event.get("service")) if p)
    where = f"{where}: " if where else ""
    commit = (event.get("commit") or "")[:12]
    reason = event.get("reason") or ""
    step = event.get("step") or ""
    if name == "reconcile-begin":
        return f"agent: reconciling {commit} (woken by {_trigger(reason)})" if commit else None
    if name == "deploy":
        return f"agent: the plan has {event.get('actions')} steps"
    if name == "step-begin":
        if step == "Start":
            return f"{where}starting {short_image(reason.removeprefix('run '))}"
        if step == "CheckHealth":
            return f"{where}checking health ({reason}) ..."
        return None if step in _QUIET else f"{where}{step}: {reason}".rstrip(": ")
    if name == "step-done":
        if step in _DATABASE:
            first, _, rest = reason.partition(" ")
            # A backup's path is long; the outcome line after the push gives it whole.
            return f"database: {Path(first).name} {rest}" if first.startswith("/") else f"database: {reason}"
        if step in _DONE:
            return f"{where}{_DONE[step]}"
        return None if step in _QUIET else f"{where}{step} done"
    if name == "step-failed":
        return f"{where}{step} FAILED: {event.get('error') or reason}"
    if name == "step-rollback":
        return f"agent: rolling back {', '.join(event.get('hosts') or ()) or 'the touched hosts'}"
    if name == "step-restored":
        return f"{where}previous container restored"
    if name == "reverted":
        return f"git: the agent committed the revert {str(event.get('revert'))[:12]} (policy.on_failure: revert)"
    if name == "reconcile-end":
        if not commit:
            waiting = event.get("reason") == "NoBranch"
            return "agent: no branch yet; waiting for a first push" if waiting else f"agent: {event.get('message')}"
        message = (event.get("message") or "").splitlines()
        tail = f": {message[0]}" if message and event.get("result") not in ("deployed", "in-sync") else ""
        return f"agent: {commit} {event.get('result')} ({event.get('reason')}){tail}"
    if name in ("internal-error", "output"):
        return f"agent: {event.get('text') or event.get('error') or name}"
    return None


@dataclass
class Follower:
    """Prints the agent's progress while the demo waits for git to say a push is done."""

    tail: LogTail
    repo_path: Path
    env: str
    out: Callable[[str], None] = print
    since: float = field(default_factory=time.monotonic)
    seen: list[dict] = field(default_factory=list)

    def start(self) -> None:
        self.since = time.monotonic()

    def pump(self) -> None:
        for event in self.tail.events():
            self.seen.append(event)
            line = describe(event)
            if line:
                self.out(f"  [{time.monotonic() - self.since:5.1f}s] {line}")

    def wait_for(self, what: str, found: Callable[[], object], timeout: float):
        """Print progress until ``found()`` is truthy; its value.  A generous
        deadline (two busy cores are normal); giving up names what it waited for."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            value = found()
            if value:
                self.pump()
                return value
            if time.monotonic() > deadline:
                raise StalledError(f"demo: waited {timeout:.0f}s for {what}; the agent's log is {self.tail.path}")
            time.sleep(POLL)

    # ------------------------------------------------------------ what git says

    def final_attempt(self, commit: str) -> Attempt | None:
        found = gitlog.attempts(gitlog.open_repo(self.repo_path), commit, self.env)
        final = [a for a in found if a.result in FINAL]
        return final[-1] if final else None

    def branch_head(self) -> str | None:
        repo = gitlog.open_repo(self.repo_path)
        return gitlog.branch_head(repo, gitlog.environment_branch(repo, self.env))

    def logged(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.seen)

    def reconciled(self, commit: str) -> dict | None:
        """The agent's reconcile-end line for ``commit`` (its log says so even
        when the run changed nothing and so left no note)."""
        short = commit[:12]
        return next((e for e in reversed(self.seen) if e.get("event") == "reconcile-end" and e.get("commit") == short), None)
