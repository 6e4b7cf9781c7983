"""Live progress of a run: a board redrawn in place on a terminal, plain
timestamped lines otherwise (logs, CI, pipes).

Both consume the executor's report events (``begin``, ``done``, ``failed``,
``rollback``, ``restored``) and nothing else.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

_MARK = {"begin": "…", "done": "✓", "failed": "✗", "restored": "↺"}


def plain_lines(stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
    """One line per event, with the seconds since the run started."""
    out = stream or sys.stdout
    start = clock()

    def show(event: str, **fields) -> None:
        where = "/".join(str(fields[k]) for k in ("host", "service") if fields.get(k))
        detail = fields.get("error") or fields.get("reason") or ""
        if event == "rollback":
            where, detail = "", f"rolling back on {', '.join(fields.get('hosts', []))}"
        print(f"[{clock() - start:6.1f}s] {event:<8} {fields.get('step', ''):<12} {where:<20} {detail}", file=out, flush=True)

    return show


class Board:
    """One row per host/service with its latest step, redrawn in place.

    Events come from several worker threads at once; a lock keeps a redraw
    whole.  Failures and the rollback also go to a log kept under the board,
    so what went wrong stays on screen when the run ends.
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = stream
        self.clock = clock
        self.start = clock()
        self.rows: dict[str, str] = {}
        self.notes: list[str] = []
        self.drawn = 0
        self.lock = threading.Lock()

    def __call__(self, event: str, **fields) -> None:
        with self.lock:
            elapsed = f"{self.clock() - self.start:5.1f}s"
            if event == "rollback":
                self.notes.append(f"{elapsed} rolling back on {', '.join(fields.get('hosts', []))}")
            else:
                where = "/".join(str(fields[k]) for k in ("host", "service") if fields.get(k)) or "-"
                step = fields.get("step", "")
                self.rows[where] = f"{_MARK.get(event, ' ')} {where:<22} {step:<12} {elapsed}"
                if event == "failed":
                    self.notes.append(f"{elapsed} {where} {step}: {fields.get('error', '')}".splitlines()[0])
            self._draw()

    def _draw(self) -> None:
        lines = [self.rows[k] for k in sorted(self.rows)] + self.notes
        # Back to the board's first line, clear to the end, draw it again.
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()
        self.drawn = len(lines)


def for_terminal(stream: TextIO | None = None):
    """A Board on a terminal, plain lines anywhere else."""
    out = stream or sys.stdout
    return Board(out) if out.isatty() else plain_lines(out)
