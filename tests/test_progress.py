"""Progress output: a board redrawn in place on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from reconciler.cli.progress import Board, for_terminal, plain_lines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_say_event_step_host_and_elapsed_time():
    out, clock = io.StringIO(), Clock()
    show = plain_lines(out, clock)
    clock.now += 1.5
    show("done", step="Start", host="h1", service="web", reason="run v2")
    show("rollback", hosts=["h1", "h2"])
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["[", "1.5s]", "done", "Start", "h1/web", "run", "v2"]
    assert "rolling back on h1, h2" in lines[1]


def test_the_board_redraws_one_row_per_host_and_keeps_failures_below():
    out, clock = io.StringIO(), Clock()
    board = Board(out, clock)
    board("begin", step="Start", host="h1", service="web")
    board("begin", step="Start", host="h2", service="web")
    clock.now += 2
    board("failed", step="CheckHealth", host="h2", service="web", error="health check failed: 500\nmore")
    board("rollback", hosts=["h1", "h2"])
    text = out.getvalue()
    # Each redraw after the first moves up over the previous board and clears it.
    assert text.count("\x1b[J") == 3
    final = text.rsplit("\x1b[J", 1)[1].splitlines()
    assert final[0].startswith("… h1/web") and "Start" in final[0]
    assert final[1].startswith("✗ h2/web") and "CheckHealth" in final[1] and final[1].endswith("2.0s")
    assert final[2] == "  2.0s h2/web CheckHealth: health check failed: 500"
    assert final[3] == "  2.0s rolling back on h1, h2"


def test_a_pipe_gets_plain_lines_and_a_terminal_the_board():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(for_terminal(Tty()), Board)
    assert not isinstance(for_terminal(io.StringIO()), Board)
