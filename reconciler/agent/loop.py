"""The agent: one reconcile at a time per environment, for ever.

Each environment has a loop (a thread) that sleeps on a condition variable
until a trigger arrives or a timer is due; idle, nothing runs.  Triggers
that arrive while a reconcile runs only set a flag, so however many pushes
land during a deploy, one reconcile of the newest commit follows it (the
reconcile records the commits it skipped as superseded).

What the loop does after a reconcile, by the result's kind (Flux's):

- ready (deployed, in sync): next look at ``policy.drift_interval``;
- stalled (health check failed, invalid desired state): nothing until the
  branch head changes; the drift check is off too, since it would redeploy
  the very commit that failed;
- waiting (locked, frozen): look again after ``waiting_retry``, or at once
  on a nudge (``reconciler unlock`` sends one);
- transient (a host unreachable): retry with exponential backoff and jitter.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, TextIO

from reconciler.engine.run import Result

ReconcileFn = Callable[..., Result]  # (env, since=..., reason=...) -> Result
HeadFn = Callable[[str], "str | None"]

DEFAULT_DRIFT_INTERVAL = 300.0
WAITING_RETRY = 30.0
BACKOFF_BASE = 2.0
BACKOFF_MAX = 300.0


@dataclass(frozen=True)
class Timing:
    drift_interval: float = DEFAULT_DRIFT_INTERVAL
    waiting_retry: float = WAITING_RETRY
    backoff_base: float = BACKOFF_BASE
    backoff_max: float = BACKOFF_MAX


def backoff(attempt: int, timing: Timing, rand: Callable[[float, float], float] = random.uniform) -> float:
    """Exponential, capped, with jitter so that agents do not retry in step."""
    ceiling = min(timing.backoff_max, timing.backoff_base * (2 ** max(0, attempt - 1)))
    return rand(ceiling / 2, ceiling)


class EnvLoop:
    """The schedule of one environment; ``step`` is one turn, ``run`` waits for turns."""

    def __init__(
        self,
        env: str,
        reconcile_fn: ReconcileFn,
        head_fn: HeadFn,
        *,
        timing: Timing = Timing(),
        clock: Callable[[], float] = time.monotonic,
        log: Callable[..., None] = lambda event, **f: None,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.env = env
        self.reconcile_fn = reconcile_fn
        self.head_fn = head_fn
        self.timing = timing
        self.clock = clock
        self.log = log
        self.rand = rand
        self.cond = threading.Condition()
        self.pending: list[str] = []
        self.stopping = False
        self.last_head: str | None = None
        self.last: Result | None = None
        self.attempts = 0
        self.due: float | None = clock()  # look once at start-up
        self.due_reason = "start"
        self.drift_interval = timing.drift_interval
        self.runs = 0

    # ------------------------------------------------------------ inputs
    def trigger(self, reason: str) -> None:
        with self.cond:
            self.pending.append(reason)
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    # ------------------------------------------------------------ the turn
    def wait(self) -> bool:
        """Block until there is something to do; False when stopping."""
        with self.cond:
            while not self.stopping and not self.pending:
                timeout = None if self.due is None else max(0.0, self.due - self.clock())
                if timeout == 0.0:
                    break
                self.cond.wait(timeout)
            return not self.stopping

    def step(self) -> Result | None:
        """Do what is due now (one reconcile at most)."""
        with self.cond:
            reasons, self.pending = self.pending, []
        now = self.clock()
        timer = self.due is not None and now >= self.due
        if not reasons and not timer:
            return None
        reason = reasons[-1] if reasons else self.due_reason
        head = self.head_fn(self.env)
        stalled = self.last is not None and self.last.kind == "stalled"
        if not timer and head == self.last_head and self.last is not None and self.last.kind is None:
            # A nudge with nothing new (our own notes, a docs branch): the
            # drift timer keeps watching the hosts.
            return None
        if stalled and head == self.last_head and not reason.startswith("manual"):
            self.due = None
            return None
        self.runs += 1
        self.log("reconcile-begin", environment=self.env, commit=head, reason=reason, coalesced=len(reasons))
        try:
            result = self.reconcile_fn(self.env, reason=reason)
        except Exception as exc:
            # A bug, not a verdict: nothing is written to git for it (the
            # engine records only what it decided).  It must not end the
            # agent either; it is logged with its traceback and retried with
            # backoff, like a transient fault.
            self.log("internal-error", environment=self.env, commit=head, error=f"{type(exc).__name__}: {exc}",
                     traceback=traceback.format_exc())
            result = Result(self.env, head, "error", "transient", "InternalError", f"{type(exc).__name__}: {exc}")
        self._after(result, head)
        return result

    def _after(self, result: Result, head: str | None) -> None:
        self.last = result
        self.last_head = result.commit or head
        interval = getattr(result, "drift_interval", None) or self.drift_interval
        self.drift_interval = interval
        now = self.clock()
        if result.kind is None:
            self.attempts = 0
            self.due, self.due_reason = now + interval, "drift"
            requeue = getattr(result, "requeue_after", None)
            if requeue is not None and requeue < interval:
                # A contract whose soak ends before the next drift check.
                self.due, self.due_reason = now + max(requeue, 1.0), "contract"
        elif result.kind == "transient":
            self.attempts += 1
            self.due, self.due_reason = now + backoff(self.attempts, self.timing, self.rand), "retry"
        elif result.kind == "waiting":
            self.due, self.due_reason = now + self.timing.waiting_retry, "retry"
        else:  # stalled: wait for a new commit
            self.attempts = 0
            self.due = None
        self.log(
            "reconcile-end",
            environment=self.env,
            commit=result.commit,
            result=result.result,
            kind=result.kind,
            reason=result.reason,
            message=result.message.splitlines()[0] if result.message else None,
            next_in=None if self.due is None else round(self.due - now, 1),
        )

    def run(self) -> None:
        while self.wait():
            self.step()


class Agent:
    """The loops of all environments, and the triggers that feed them."""

    def __init__(self, envs_fn: Callable[[], list[str]], make_loop: Callable[[str], EnvLoop], log: Callable[..., None]) -> None:
        self.envs_fn = envs_fn
        self.make_loop = make_loop
        self.log = log
        self.loops: dict[str, EnvLoop] = {}
        self.threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Start a loop for every environment the branch heads name."""
        try:
            names = self.envs_fn()
        except Exception as exc:
            self.log("discover-failed", error=str(exc))
            return
        with self._lock:
            for env in names:
                if env not in self.loops:
                    loop = self.make_loop(env)
                    self.loops[env] = loop
                    thread = threading.Thread(target=loop.run, name=f"env-{env}", daemon=True)
                    self.threads[env] = thread
                    thread.start()
                    self.log("watching", environment=env)

    def trigger(self, reason: str) -> None:
        self.refresh()
        with self._lock:
            loops = list(self.loops.values())
        for loop in loops:
            loop.trigger(reason)

    def stop(self) -> None:
        for loop in self.loops.values():
            loop.stop()
        for thread in self.threads.values():
            thread.join(timeout=30)


# ---------------------------------------------------------------- logging

_SECRET_RE = re.compile(r"(?i)\b([\w.-]*(?:password|passwd|secret|token|api[_-]?key)[\w.-]*)(\s*[=:]\s*)(\S+)")
_ORDER = ("environment", "service", "host", "commit")


def mask(text: str) -> str:
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def make_logger(fmt: str = "text", stream: TextIO | None = None, clock: Callable[[], float] = time.time) -> Callable[..., None]:
    """log(event, **fields) writing one line per call: JSON, or key=value text.

    environment, service, host and commit are always present (``-`` when a
    line concerns none), so that ``grep host=h2`` finds every line of a host.
    """
    lock = threading.Lock()

    def log(event: str, **fields) -> None:
        out = stream or sys.stderr
        base = {k: fields.pop(k, None) for k in _ORDER}
        if base["commit"]:
            base["commit"] = str(base["commit"])[:12]
        fields = {k: (mask(v) if isinstance(v, str) else v) for k, v in fields.items() if v is not None}
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(clock())) + "Z"
        if fmt == "json":
            line = json.dumps({"ts": ts, "event": event, **base, **fields}, default=str, sort_keys=False)
        else:
            head = " ".join(f"{k}={base[k] or '-'}" for k in _ORDER)
            rest = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and (' ' in v or not v) else v}" for k, v in fields.items())
            line = f"{ts} {event:<16} {head} {rest}".rstrip()
        with lock:
            out.write(line + "\n")
            out.flush()

    return log
