"""Smoke test of the start-up figure (bench/cli_startup.py): well-formed
rows from one repetition.  No timing is asserted: that is `make bench`'s job."""

from __future__ import annotations

import math

from bench import cli_startup
from bench.common import HEADER, table


def test_the_startup_figure_gives_two_well_formed_rows():
    rows = cli_startup.run(reps=1)
    assert [r.figure.split(" (")[0] for r in rows] == ["reconciler --help", "reconciler validate, example repo"]
    for row in rows:
        assert len(row.cells()) == len(HEADER)
        assert row.ours.endswith("ms") or row.ours.endswith(" s")
        assert math.isfinite(row.ratio) and row.ratio > 0
        assert row.extra["ours"] > 0 and row.extra["baseline"] > 0
    assert rows[0].target == "< 150 ms" and rows[0].met in ("yes", "no")
    assert rows[1].met == "n/a"
    assert "reconciler --help" in table(rows)
