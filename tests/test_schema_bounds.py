"""Bounded parsing: a hostile file is refused at the place it passed a limit,
quickly, and no library warning reaches the terminal (issue 12)."""

from __future__ import annotations

import time
import warnings

import pytest

from reconciler.core.schema import validate
from reconciler.core.schema_compose import MAX_DEPTH, MAX_NODES
from schema_helpers import ENV, KNOWN_HOSTS, snapshot

F = "environments/test/environment.yaml"


def problems_of(data: bytes) -> list[str]:
    return validate(snapshot(env=None, files={F: data, "environments/test/known_hosts": KNOWN_HOSTS}))


def at(problems: list[str], line: int, col: int, text: str) -> None:
    assert any(p.startswith(f"{F}:{line}:{col}: ") and text in p for p in problems), problems


@pytest.mark.parametrize(
    ("data", "line", "col"),
    [
        # The file: 4 KB of '[' after a key.  The root mapping is the
        # first level, so the 40th bracket (at column 8 + 39) is the 41st.
        (b"hosts: " + b"[" * 4090, 1, 8 + MAX_DEPTH - 1),
        (b"hosts: " + b"{a: " * 1000, 1, 8 + 4 * (MAX_DEPTH - 1)),
        # Block nesting written on one line: each "- " opens a sequence.
        (b"- " * 2000 + b"x", 1, 1 + 2 * MAX_DEPTH),
        (b"? " * 2000 + b"x", 1, 1 + 2 * MAX_DEPTH),
        # Block nesting by indentation: line 41 starts the 41st mapping.
        (b"".join(b" " * i + b"k:\n" for i in range(60)), MAX_DEPTH + 1, MAX_DEPTH + 1),
        # Deep nesting after ordinary content, on a later line.
        (ENV.encode() + b"extra: " + b"[" * 100, 18, 8 + MAX_DEPTH - 1),
    ],
    ids=["brackets", "braces", "dashes", "complex-keys", "indentation", "later-line"],
)
def test_nesting_is_refused_where_it_passes_the_limit(data, line, col):
    started = time.monotonic()
    problems = problems_of(data)
    at(problems, line, col, f"nested more than {MAX_DEPTH} levels deep")
    assert time.monotonic() - started < 2  # sanity only: it took 7.6 s before the bound


def test_nesting_at_the_limit_is_not_refused_for_depth():
    # 40 levels of lists under the root mapping: deep, but within the bound.
    data = b"hosts: " + b"[" * (MAX_DEPTH - 1) + b"1" + b"]" * (MAX_DEPTH - 1) + b"\n"
    assert not any("nested more than" in p for p in problems_of(data))


def test_too_many_nodes_are_refused_at_the_node_past_the_limit():
    # A key and a value per line under a root mapping (node 1), so node
    # MAX_NODES + 1 is the value on line MAX_NODES / 2, after "kNNNN: ".
    data = b"".join(b"k%d: v\n" % i for i in range(MAX_NODES))
    problems = problems_of(data)
    at(problems, MAX_NODES // 2, 2 + len(str(MAX_NODES // 2 - 1)) + 2, f"more than {MAX_NODES} YAML nodes")


def test_a_reused_anchor_is_a_problem_with_a_position_and_prints_nothing(capfd):
    data = ENV.replace("APP_ENV: test", "APP_ENV: &e test\n      OTHER: &e again\n      THIRD: *e").encode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problems = problems_of(data)
    assert [str(w.message) for w in caught] == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    at(problems, 15, 14, "YAML anchor 'e' defined again (first at 14:16)")
    at(problems, 14, 16, "anchors and aliases are not supported")


def test_an_ordinary_file_is_unaffected():
    assert problems_of(ENV.encode()) == []
