"""Reading the environment repository: snapshot files -> located YAML nodes.

Pure: works on a ``Snapshot`` (repo-relative paths -> bytes) that an adapter
(``reconciler.adapters.source``) built from a working tree or a commit.  YAML is
*composed*, never constructed: we get the node graph with every position and
turn scalars into plain values ourselves, so no tag can build an object, every
duplicate key is seen (not only the first), and aliases cannot blow up.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from reconciler.core.schema_compose import MAX_DEPTH, compose

MAX_FILE_BYTES = 1024 * 1024
_MAX_LINK_HOPS = 8

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")}


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Snapshot:
    """The files of an environment repository at one point in time.

    ``files``: repo-relative posix path -> content.  ``links``: symlink path ->
    its raw target (the adapter does not follow links; schema decides whether a
    target stays inside the repository).  ``oversize``: path -> size for files
    the adapter refused to read.  ``revision`` is the commit id, or None for a
    working tree.
    """

    files: Mapping[str, bytes] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    oversize: Mapping[str, int] = field(default_factory=dict)
    revision: str | None = None

    def __post_init__(self) -> None:
        # Read-only views, so a shared snapshot cannot be changed under a reader.
        object.__setattr__(self, "files", _frozen(self.files))
        object.__setattr__(self, "links", _frozen(self.links))
        object.__setattr__(self, "oversize", _frozen(self.oversize))

    def paths(self) -> tuple[str, ...]:
        return tuple(sorted({*self.files, *self.links, *self.oversize}))


@dataclass(frozen=True, order=True)
class Problem:
    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class Problems:
    """Collects every problem found; the loader never stops at the first."""

    def __init__(self) -> None:
        self._found: set[Problem] = set()

    def add(self, path: str, line: int, col: int, message: str) -> None:
        self._found.add(Problem(path, max(line, 1), max(col, 1), message))

    def at(self, node: "Node", message: str) -> None:
        self.add(node.path, node.line, node.col, message)

    def merge(self, other: "Problems") -> None:
        self._found |= other._found

    def __bool__(self) -> bool:
        return bool(self._found)

    def formatted(self) -> list[str]:
        return [str(p) for p in sorted(self._found)]


class Unsupported:
    """A scalar we refuse to interpret (explicit tag, .inf, binary ...)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return self.what


@dataclass(frozen=True, eq=False)
class Node:
    """A YAML value with where it was written (1-based line and column).

    ``value`` is a str, int, float, bool, None, ``Unsupported``, a list of
    Nodes, or a dict of str -> Node; for a dict, ``keys`` holds the node of
    each key so errors about a key point at the key.
    """

    value: Any
    path: str
    line: int
    col: int
    keys: Mapping[str, "Node"] = field(default_factory=dict)
    text: str = ""  # the scalar as written, to quote it back in messages

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)


def describe(node: Node) -> str:
    """A reader's name for a node's type, for 'expected X, got Y' messages."""
    value = node.value
    if isinstance(value, Unsupported):
        return value.what
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


# ------------------------------------------------------------------ files


def resolve_path(snapshot: Snapshot, path: str) -> tuple[str | None, str | None]:
    """Follow symlinks inside the snapshot; return (real path, refusal reason)."""
    seen = 0
    current = path
    while current in snapshot.links:
        seen += 1
        if seen > _MAX_LINK_HOPS:
            return None, "symlink loop"
        target = snapshot.links[current]
        if posixpath.isabs(target):
            return None, f"symlink to {target!r} leaves the repository"
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
        if joined == ".." or joined.startswith("../"):
            return None, f"symlink to {target!r} leaves the repository"
        current = joined
    return current, None


def check_repo_path(text: str) -> str | None:
    """Why a path written in a file may not be used, or None when it is fine."""
    if not text or posixpath.isabs(text) or "\\" in text or "\0" in text:
        return f"path {text!r} must be relative to the repository"
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        return f"path {text!r} leaves the repository"
    return None


def read_file(snapshot: Snapshot, path: str, problems: Problems) -> bytes | None:
    """The content of ``path``, or None after recording why it cannot be read."""
    real, refusal = resolve_path(snapshot, path)
    if refusal:
        problems.add(path, 1, 1, refusal)
        return None
    assert real is not None
    if real in snapshot.oversize:
        size = snapshot.oversize[real]
        problems.add(path, 1, 1, f"file is {size} bytes, over the {MAX_FILE_BYTES} byte limit")
        return None
    data = snapshot.files.get(real)
    if data is not None and len(data) > MAX_FILE_BYTES:
        problems.add(path, 1, 1, f"file is {len(data)} bytes, over the {MAX_FILE_BYTES} byte limit")
        return None
    return data


def exists(snapshot: Snapshot, path: str) -> bool:
    real, refusal = resolve_path(snapshot, path)
    return refusal is not None or real in snapshot.files or real in snapshot.oversize


# ------------------------------------------------------------------- YAML


def parse_yaml(path: str, data: bytes, problems: Problems) -> Node | None:
    """Compose ``data`` into located Nodes; None (with problems) when unreadable.

    An empty document gives a Node whose value is None.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        problems.add(path, line, col, "file is not valid UTF-8")
        return None
    try:
        # Bounded in depth and node count (schema_compose), so that a
        # hostile file is refused at the place it passed a limit, quickly.
        root, notes = compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "malformed YAML"
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problems.add(path, line, col, f"malformed YAML: {what}")
        return None
    except YAMLError as exc:
        problems.add(path, 1, 1, f"malformed YAML: {exc}")
        return None
    for line, col, message in notes:
        problems.add(path, line, col, message)
    if root is None:
        return Node(None, path, 1, 1)
    return _convert(root, path, problems, 0, {})


def _pos(yaml_node: Any) -> tuple[int, int]:
    mark = yaml_node.start_mark
    return mark.line + 1, mark.column + 1


def _convert(yaml_node: Any, path: str, problems: Problems, depth: int, memo: dict[int, Node], anchor_seen: bool = False) -> Node:
    line, col = _pos(yaml_node)
    if getattr(yaml_node, "anchor", None) and not anchor_seen:
        # Aliases let one edit change many places unseen in review; shared
        # values belong in reconciler.yaml defaults.  Reported once, at the
        # anchor; the converted value is memoised so that nested aliases
        # ("billion laughs") cost no more than the text that wrote them.
        if id(yaml_node) in memo:
            return memo[id(yaml_node)]
        problems.add(path, line, col, "YAML anchors and aliases are not supported; put shared values in reconciler.yaml defaults")
        memo[id(yaml_node)] = Node(Unsupported("an aliased value"), path, line, col)  # an alias inside itself
        memo[id(yaml_node)] = converted = _convert(yaml_node, path, problems, depth, memo, anchor_seen=True)
        return converted
    if depth > MAX_DEPTH:
        problems.add(path, line, col, f"nested more than {MAX_DEPTH} levels deep")
        return Node(Unsupported("a too deeply nested value"), path, line, col)
    tag = yaml_node.tag if isinstance(yaml_node.tag, str) else str(getattr(yaml_node.tag, "value", yaml_node.tag))
    if tag not in _PLAIN_TAGS:
        shown = "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag
        problems.add(path, line, col, f"YAML tag {shown!r} is not allowed")
        return Node(Unsupported(f"a value tagged {tag}"), path, line, col)
    if isinstance(yaml_node, MappingNode):
        return _convert_mapping(yaml_node, path, problems, depth, line, col, memo)
    if isinstance(yaml_node, SequenceNode):
        items = [_convert(item, path, problems, depth + 1, memo) for item in yaml_node.value]
        return Node(items, path, line, col)
    assert isinstance(yaml_node, ScalarNode)
    return Node(_scalar(tag, yaml_node.value), path, line, col, text=str(yaml_node.value))


def _convert_mapping(yaml_node: MappingNode, path: str, problems: Problems, depth: int, line: int, col: int, memo: dict[int, Node]) -> Node:
    values: dict[str, Node] = {}
    keys: dict[str, Node] = {}
    for key_node, value_node in yaml_node.value:
        key = _convert(key_node, path, problems, depth + 1, memo)
        if key_node.tag == _TAG + "merge":
            problems.at(key, "YAML merge keys (<<) are not supported; put shared values in reconciler.yaml defaults")
            continue
        if not isinstance(key.value, str):
            problems.at(key, f"keys must be strings, got {describe(key)}")
            continue
        if key.value in keys:
            first = keys[key.value]
            problems.at(key, f"duplicate key {key.value!r} (first at {first.line}:{first.col})")
            continue
        keys[key.value] = key
        values[key.value] = _convert(value_node, path, problems, depth + 1, memo)
    return Node(values, path, line, col, keys=keys)


def _scalar(tag: str, text: str) -> Any:
    kind = tag[len(_TAG) :]
    if kind in ("str", "timestamp"):
        # A date is kept as the text written; fields that want one say so.
        return text
    if kind == "null":
        return None
    if kind == "bool":
        return text.lower() in ("true", "yes", "on", "y")
    cleaned = text.replace("_", "")
    if kind == "int":
        for base in (0, 10):  # 0x1F and 0o17 need base 0; 017 needs base 10
            try:
                return int(cleaned, base)
            except ValueError:
                pass
        return Unsupported(f"the number {text!r}")
    try:
        number = float(cleaned)
    except ValueError:
        return Unsupported(f"the number {text!r}")
    if number != number or number in (float("inf"), float("-inf")):
        return Unsupported(f"the number {text!r}")
    return number
