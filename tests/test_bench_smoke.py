"""Smoke test of the benchmark harness: one figure, one repetition, on the fleet.

Checks that the row and the table are well-formed, never how fast anything
is: timings belong in `make bench`, not in assertions.
"""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def test_deploy_figure_gives_one_well_formed_row(fleet):
    from bench import deploy
    from bench.common import HEADER, Row, table

    rows = deploy.run(reps=1, profile=False)
    assert len(rows) == 1
    row = rows[0]
    assert isinstance(row, Row)
    cells = row.cells()
    assert len(cells) == len(HEADER)
    assert row.figure.startswith("deploy")
    assert row.ours.endswith(("ms", "s")) and row.baseline.endswith(("ms", "s"))
    assert row.ratio is not None and math.isfinite(row.ratio) and row.ratio > 0
    assert cells[3] == f"{row.ratio:.2f}x"
    assert row.met in ("yes", "no")
    assert row.extra["ours"] > 0 and row.extra["baseline"] > 0

    text = table(rows + [Row.na("later", "-", "not supported yet")])
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "figure"
    assert all(line.count("|") == len(HEADER) + 1 for line in lines[:4])
    assert "| n/a" in lines[3] and "not supported yet" in text
