"""Composing YAML within bounds, so that a hostile file costs little to refuse.

Pure.  ruamel.yaml's composer recurses once per nesting level, and its
scanner, inside flow collections (``[[[[``), looks ahead over every open
level for each token: a 4 KB file of brackets took seconds before it failed
with a RecursionError at no useful position.  Two limits are checked in the
token and event streams, as ruamel produces them, before the composer
descends into a node:

- the scanner refuses to open a flow collection deeper than ``MAX_DEPTH``
  levels, at the bracket, before it looks ahead any further;
- the composer refuses a collection that would be the ``MAX_DEPTH + 1``-th
  level (or a scalar inside more than ``MAX_DEPTH`` collections), and the
  node after the ``MAX_NODES``-th of a file, at that node.

Both refusals are ``MarkedYAMLError``s, so the caller reports them at
``file:line:col`` like any other malformed YAML.  ruamel's one warning on
this path (an anchor defined twice) is turned off and reported as a
problem at the second definition instead, so nothing reaches a terminal.
"""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent, ScalarEvent
from ruamel.yaml.scanner import Scanner

MAX_DEPTH = 40
# A large environment file (a hundred services inline) has a few thousand
# nodes; composing 20,000 takes well under a second on a loaded core.
MAX_NODES = 20_000


class LimitExceeded(MarkedYAMLError):
    """A file nested too deeply or holding too many nodes."""


class _BoundedScanner(Scanner):
    def fetch_flow_collection_start(self, TokenClass: Any, to_push: str) -> None:
        # The open flow levels plus the block collections around them (one
        # indent each; an indentless sequence has none, so this never counts
        # more levels than the composer will).
        if self.flow_level + len(self.indents) >= MAX_DEPTH:
            raise LimitExceeded(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=self.reader.get_mark())
        super().fetch_flow_collection_start(TokenClass, to_push)


class _BoundedComposer(Composer):
    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # reported as a problem below, not printed
        self.nodes = 0
        self.notes: list[tuple[Any, str]] = []  # (mark, message) for what is not fatal

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise LimitExceeded(problem=f"more than {MAX_NODES} YAML nodes in one file", problem_mark=event.start_mark)
        if not isinstance(event, AliasEvent):
            # self.depth counts the collections this node sits in; a
            # collection is one level more itself (as the scanner counts).
            level = self.depth + (not isinstance(event, ScalarEvent))
            if level > MAX_DEPTH:
                raise LimitExceeded(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=event.start_mark)
            anchor = event.anchor
            if anchor is not None and anchor in self.anchors:
                first = self.anchors[anchor].start_mark
                self.notes.append((event.start_mark, f"YAML anchor {anchor!r} defined again (first at {first.line + 1}:{first.column + 1})"))
        return super().compose_node(parent, index)


def compose(text: str) -> tuple[Any, list[tuple[int, int, str]]]:
    """The root node of ``text`` (None when empty) and the non-fatal notes as
    (line, col, message), 1-based.  Raises ruamel's MarkedYAMLError (a
    ``LimitExceeded`` for the bounds) or YAMLError."""
    # "safe" and pure Python: comments are not needed (we only compose), and
    # the pure classes are the ones the limits plug into.
    yaml = YAML(typ="safe", pure=True)
    yaml.Scanner = _BoundedScanner
    yaml.Composer = _BoundedComposer
    root = yaml.compose(io.StringIO(text))
    notes = [(mark.line + 1, mark.column + 1, message) for mark, message in yaml.composer.notes]
    return root, notes
