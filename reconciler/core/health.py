"""Health decisions: from check results over time to a verdict.  Pure.

The clock is passed in, so every rule here is tested without sleeping.
Rules (the ones Docker's HEALTHCHECK and Kubernetes' probes taught users):

- a container that exited or died is unhealthy at once (``fatal``);
- failures before the verdict do not count against the service: only the
  final streak and the deadline decide;
- healthy means the last ``successes`` checks all passed, one after the
  other: a flapping service never gets there;
- not healthy by the deadline is unhealthy, and the verdict carries the
  last checks as evidence.  The deadline counts from the end of the start
  period (Docker's ``start_period``: time to boot, given on top), so a slow
  starter needs no inflated deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from reconciler.core.model import HealthCheck

EVIDENCE_KEPT = 5


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str
    at: float  # monotonic seconds
    fatal: bool = False  # waiting cannot help (the container is gone)


@dataclass(frozen=True)
class Verdict:
    state: Literal["pending", "healthy", "unhealthy"]
    reason: str
    evidence: tuple[CheckResult, ...] = ()

    @property
    def done(self) -> bool:
        return self.state != "pending"


def consecutive_successes(results: Sequence[CheckResult]) -> int:
    count = 0
    for result in reversed(results):
        if not result.ok:
            break
        count += 1
    return count


def judge(check: HealthCheck, started_at: float, results: Sequence[CheckResult], now: float) -> Verdict:
    """The verdict on a container started at ``started_at`` given its checks so far."""
    evidence = tuple(results[-EVIDENCE_KEPT:])
    if results and results[-1].fatal:
        return Verdict("unhealthy", results[-1].detail, evidence)
    streak = consecutive_successes(results)
    if streak >= check.successes:
        return Verdict("healthy", f"{streak} consecutive checks passed", evidence)
    if now - started_at >= check.allowed:
        last = results[-1].detail if results else "no check completed"
        within = f"{check.deadline:g}s" + (f" after a {check.start_period:g}s start period" if check.start_period else "")
        return Verdict(
            "unhealthy",
            f"not healthy within {within} ({streak}/{check.successes} consecutive passes); last: {last}",
            evidence,
        )
    return Verdict("pending", f"{streak}/{check.successes} consecutive passes", evidence)


def next_check_at(check: HealthCheck, started_at: float, last_at: float | None) -> float:
    """When to run the next check: at once, then every interval.

    Checks run during the start period too: a pass there counts (a fast
    starter is not made to wait, as with Docker's), a failure costs nothing
    because only the streak and the deadline decide.
    """
    return started_at if last_at is None else last_at + check.interval
