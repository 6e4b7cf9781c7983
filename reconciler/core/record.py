"""What the record in git says: typed, append-only outcomes.  Pure.

This module alone decides what a note says.  Every run of the engine on an
environment (a deploy, a rollback, a database restore, a contract, a run that
was refused or failed) ends as one ``Attempt``; a commit's note holds the list
of its attempts, oldest first, and a new attempt is appended, never merged
into an older one, so a refusal stays a refusal after the commit is later
superseded or retried::

    reconciler: production refused 1a2b3c4d5e6f at 2026-05-01T10:00:00Z (0.4s): MigrationRefused ...
    reconciler: production deployed 1a2b3c4d5e6f on h1,h2 at 2026-05-01T10:05:00Z (12.3s) by agent

    {"reconciler": 2, "attempts": [{...}, {...}]}

An attempt also carries ``serving``: what each host ran for each service from
which instant on, observed on the host after every step that changed it (a
container started, retired, switched in, restored), so ``running_at`` can
say, from git alone, what every host ran at any moment, including the
seconds in which a rolling deploy served a release that was then rolled back.

Version 1 notes (one merged record per environment) are still read, as one
attempt each.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Literal, Mapping

NOTE_VERSION = 2

ResultName = Literal[
    "deployed",      # the commit's desired state was applied and is healthy
    "in-sync",       # the hosts already ran it; nothing changed (drift heals are listed in serving)
    "rolled-back",   # a deploy failed its checks and every touched host was put back; or the rollback lever ran
    "refused",       # refused before any host changed (a migration, a release older than a contract, policy)
    "failed",        # failed; see reason (invalid desired state, rollback failed, maintenance failed)
    "superseded",    # never tried: a newer commit was reconciled first
    "restored",      # a database restore ran
    "contracted",    # contract migrations ran
    "error",         # the run stopped before changing anything (a host unreachable, a lock); retried
]
RESULTS: tuple[str, ...] = ResultName.__args__  # type: ignore[attr-defined]
Operation = Literal["deploy", "rollback", "restore", "contract"]

# Results after which the environment ran the commit's desired state.
RAN = ("deployed", "in-sync")


@dataclass(frozen=True)
class Serving:
    """From ``at`` on, ``host`` ran ``container`` (``image``) for ``service``;
    ``image`` None: nothing of the service was running there."""

    at: float
    host: str
    service: str
    image: str | None
    container: str | None = None
    state: str = "running"
    revision: str | None = None


@dataclass(frozen=True)
class Attempt:
    environment: str
    commit: str
    result: str
    operation: str = "deploy"
    reason: str = ""  # PascalCase, as in the status: ReconciliationSucceeded, HealthCheckFailed, MigrationRefused, ...
    message: str = ""  # the failure or the refusal, first line first
    trigger: str = ""  # push, drift, retry, start, cli, api ...
    actor: str = ""  # who asked: the agent (host:pid) or the CLI user (user@host)
    run_id: str = ""
    started: float = 0.0
    finished: float = 0.0
    hosts: tuple[str, ...] = ()
    digests: tuple[tuple[str, str], ...] = ()  # service -> image the commit desires
    services_changed: tuple[str, ...] = ()
    serving: tuple[Serving, ...] = ()
    evidence: tuple[str, ...] = ()
    failed_check: tuple[str, str, str] | None = None  # host, service, check
    revert_commit: str | None = None
    superseded_by: str | None = None
    signer: str = ""  # who signed the commit, verified against the agent's trust root ("" unsigned or unchecked)
    details: Mapping[str, Any] = field(default_factory=dict)  # database phase, contract, restore: JSON values only

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"unknown result {self.result!r}")

    @property
    def ran(self) -> bool:
        return self.result in RAN

    def image_of(self, service: str) -> str | None:
        return dict(self.digests).get(service)


MAX_EVIDENCE = 4000


def to_json(attempt: Attempt) -> dict:
    doc = asdict(attempt)
    doc["serving"] = [asdict(s) for s in attempt.serving]
    doc["digests"] = dict(attempt.digests)
    doc["evidence"] = [e[-MAX_EVIDENCE:] for e in attempt.evidence]
    doc["details"] = dict(attempt.details)
    return {k: v for k, v in doc.items() if v not in (None, "", (), [], {})} | {"result": attempt.result}


def from_json(doc: Mapping[str, Any]) -> Attempt:
    known = {f.name for f in fields(Attempt)}
    values = {k: v for k, v in doc.items() if k in known}
    values["hosts"] = tuple(values.get("hosts", ()))
    values["digests"] = tuple(sorted(dict(values.get("digests", {})).items()))
    values["services_changed"] = tuple(values.get("services_changed", ()))
    values["evidence"] = tuple(values.get("evidence", ()))
    values["serving"] = tuple(Serving(**s) for s in values.get("serving", ()))
    if values.get("failed_check") is not None:
        values["failed_check"] = tuple(values["failed_check"])
    values["details"] = dict(values.get("details", {}))
    return Attempt(**values)


def _from_v1(env: str, commit: str, record: Mapping[str, Any]) -> Attempt:
    """A version 1 record: one per environment, its ``running`` the final state."""
    finished = record.get("finished") or record.get("started") or 0.0
    serving = tuple(
        Serving(finished, key.split("/", 1)[0], key.split("/", 1)[1], r.get("image"), None, r.get("state", "running"), r.get("revision"))
        for key, r in sorted((record.get("running") or {}).items())
    )
    check = record.get("failed_check")
    result = record.get("result", "error")
    return Attempt(
        environment=env, commit=commit, result=result if result in RESULTS else "error",
        reason=record.get("reason", ""), message=record.get("failure", ""), trigger=record.get("trigger", ""),
        actor=record.get("agent", ""), started=record.get("started") or 0.0, finished=finished,
        hosts=tuple(record.get("hosts", ())), digests=tuple(sorted((record.get("digests") or {}).items())),
        services_changed=tuple(record.get("services_changed", ())), serving=serving,
        evidence=tuple(record.get("evidence", ())),
        failed_check=(check["host"], check["service"], check["check"]) if check else None,
        revert_commit=record.get("revert_commit"), superseded_by=record.get("superseded_by"),
        details={"database": record["database"]} if record.get("database") else {},
    )


# ---------------------------------------------------------------- the note


def parse(message: str, commit: str) -> tuple[Attempt, ...]:
    """Every attempt a note's text records, oldest first (none for a foreign note)."""
    start = message.find("\n{")
    body = message[start + 1 :] if start >= 0 else (message if message.startswith("{") else "")
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        return ()
    if not isinstance(doc, dict):
        return ()
    if doc.get("reconciler") == 1:
        return tuple(_from_v1(env, commit, r) for env, r in sorted(doc.get("environments", {}).items()))
    out = []
    for item in doc.get("attempts", ()):
        try:
            out.append(from_json({**item, "commit": item.get("commit", commit)}))
        except (TypeError, ValueError):
            continue  # a hand-edited entry; the others still read
    return tuple(out)


def render(attempts: Iterable[Attempt]) -> str:
    """The note's text: a summary line per attempt, then the JSON."""
    attempts = tuple(attempts)
    summary = "\n".join(summary_line(a) for a in attempts)
    doc = {"reconciler": NOTE_VERSION, "attempts": [to_json(a) for a in attempts]}
    return summary + "\n\n" + json.dumps(doc, indent=1, sort_keys=True) + "\n"


def append(existing: tuple[Attempt, ...], attempt: Attempt) -> tuple[Attempt, ...]:
    """The note after ``attempt``: every earlier attempt kept as it was."""
    return existing + (attempt,)


def summary_line(a: Attempt) -> str:
    took = f" ({a.finished - a.started:.1f}s)" if a.finished and a.started else ""
    where = f" on {','.join(a.hosts)}" if a.hosts else ""
    what = a.result if a.operation in ("deploy",) or a.result not in ("rolled-back",) else f"{a.operation} {a.result}"
    line = f"reconciler: {a.environment} {what} {a.commit[:12]}{where} at {iso(a.finished or a.started)}{took}"
    if a.actor:
        line += f" by {a.actor}"
    if a.message:
        line += f": {a.reason + ' ' if a.reason and a.reason not in a.message else ''}{a.message.splitlines()[0]}"
    if a.superseded_by:
        line += f" by {a.superseded_by[:12]}"
    return line


def iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "-"


# ---------------------------------------------------------------- reading history


def running_at(attempts: Iterable[Attempt], at: float, environment: str) -> dict[tuple[str, str], Serving]:
    """(host, service) -> what ran there at ``at``, folded from every attempt's
    observations up to that instant (later observations win)."""
    events = sorted(
        (s for a in attempts if a.environment == environment for s in a.serving if s.at <= at),
        key=lambda s: s.at,
    )
    state: dict[tuple[str, str], Serving] = {}
    for s in events:
        state[(s.host, s.service)] = s
    return state


def last_ran(attempts: Iterable[Attempt], environment: str) -> Attempt | None:
    """The newest attempt after which ``environment`` ran its commit's desired state."""
    ran = [a for a in attempts if a.environment == environment and a.ran]
    return max(ran, key=lambda a: a.finished, default=None)


def healthy_since(attempts: Iterable[Attempt], environment: str, service: str, image: str) -> float | None:
    """Since when ``service`` has run ``image`` without a break: the earliest
    end of the unbroken run of attempts, newest backwards, that ran it.  A
    commit that changes only a flag does not restart the soak."""
    ran = sorted((a for a in attempts if a.environment == environment and a.ran and a.image_of(service)),
                 key=lambda a: a.finished, reverse=True)
    since = None
    for a in ran:
        if a.image_of(service) != image:
            break
        since = a.finished or since
    return since


def with_serving(attempt: Attempt, serving: Iterable[Serving]) -> Attempt:
    return replace(attempt, serving=attempt.serving + tuple(serving))
