"""Typed readers for located YAML nodes.

Each reader returns the converted value, or ``BAD`` after recording a problem
at the node, so that a caller keeps going and every problem is reported in
one pass.  ``what`` is the dotted key path a reader sees in messages
(``services.web.health.interval``).
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterable
from typing import Any

from reconciler.core.schema_yaml import Node, Problems, describe


class _Bad:
    def __repr__(self) -> str:
        return "BAD"

    def __bool__(self) -> bool:
        return False


BAD: Any = _Bad()

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def suggestion(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a close option exists, else ''."""
    options = sorted(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    # difflib misses abbreviations ("prod" for "production"); a prefix is a hint too.
    close = close or [o for o in options if len(word) >= 3 and o.startswith(word)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def mapping(node: Node, allowed: Iterable[str], problems: Problems, what: str, special: dict[str, str] | None = None) -> dict[str, Node] | Any:
    """The entries of a mapping node whose keys are all known.

    Unknown keys are reported at the key with a did-you-mean; ``special`` gives
    a dedicated message for keys that are refused on purpose (``value`` of a
    secret).  Known entries are returned even when others are unknown.
    """
    if not node.is_mapping:
        problems.at(node, f"{what}: expected a mapping, got {describe(node)}")
        return BAD
    allowed = tuple(allowed)
    special = special or {}
    for key, key_node in node.keys.items():
        if key in special:
            problems.at(key_node, special[key])
        elif key not in allowed:
            problems.at(key_node, f"{what}: unknown key {key!r}{suggestion(key, allowed)}")
    return {k: v for k, v in node.value.items() if k in allowed}


def string(node: Node, problems: Problems, what: str, pattern: re.Pattern[str] | None = None, hint: str = "") -> str | Any:
    if not isinstance(node.value, str):
        quote = f'; quote it: "{node.text}"' if node.text and isinstance(node.value, (int, float, bool)) else ""
        problems.at(node, f"{what}: expected a string, got {describe(node)}{quote}")
        return BAD
    if pattern is not None and not pattern.match(node.value):
        problems.at(node, f"{what}: invalid value {node.value!r}{hint and '; ' + hint}")
        return BAD
    return node.value


def integer(node: Node, problems: Problems, what: str, minimum: int | None = None, maximum: int | None = None) -> int | Any:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int):
        problems.at(node, f"{what}: expected a whole number, got {describe(node)}")
        return BAD
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        problems.at(node, f"{what}: must be {bounds}, got {value}")
        return BAD
    return value


def number(node: Node, problems: Problems, what: str, minimum: float = 0.0, strict: bool = False) -> float | Any:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.at(node, f"{what}: expected a number, got {describe(node)}")
        return BAD
    if value < minimum or (strict and value == minimum):
        problems.at(node, f"{what}: must be {'more than' if strict else 'at least'} {minimum:g}, got {value}")
        return BAD
    return float(value)


def boolean(node: Node, problems: Problems, what: str) -> bool | Any:
    if not isinstance(node.value, bool):
        problems.at(node, f"{what}: expected true or false, got {describe(node)}")
        return BAD
    return node.value


def choice(node: Node, problems: Problems, what: str, choices: tuple[str, ...]) -> str | Any:
    value = string(node, problems, what)
    if value is BAD:
        return BAD
    if value not in choices:
        listed = ", ".join(choices)
        problems.at(node, f"{what}: must be one of {listed}, got {value!r}{suggestion(value, choices)}")
        return BAD
    return value


def duration(node: Node, problems: Problems, what: str, positive: bool = False) -> float | Any:
    """Seconds from ``500ms``, ``2s``, ``1m30s``, ``1h`` or a plain number of seconds."""
    value = node.value
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds is None or seconds < 0:
        problems.at(node, f"{what}: expected a duration like 500ms, 2s, 1m or 1h, got {node.text or describe(node)!r}")
        return BAD
    if positive and seconds == 0:
        problems.at(node, f"{what}: must be longer than 0s")
        return BAD
    return seconds


def items(node: Node, problems: Problems, what: str) -> list[Node] | Any:
    if not isinstance(node.value, list):
        problems.at(node, f"{what}: expected a list, got {describe(node)}")
        return BAD
    return node.value


def string_list(node: Node, problems: Problems, what: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...] | Any:
    entries = items(node, problems, what)
    if entries is BAD:
        return BAD
    values = [string(item, problems, f"{what}[{i}]", pattern) for i, item in enumerate(entries)]
    return BAD if any(v is BAD for v in values) else tuple(values)


def argv(node: Node, problems: Problems, what: str) -> tuple[str, ...] | Any:
    """A command as a list of strings, or one string split like a shell would."""
    if isinstance(node.value, str):
        try:
            words = tuple(shlex.split(node.value))
        except ValueError as exc:
            problems.at(node, f"{what}: cannot split command: {exc}")
            return BAD
        if not words:
            problems.at(node, f"{what}: command is empty")
            return BAD
        return words
    words = string_list(node, problems, what)
    if words is not BAD and not words:
        problems.at(node, f"{what}: command is empty")
        return BAD
    return words


def string_map(node: Node, problems: Problems, what: str) -> dict[str, tuple[Node, str]] | Any:
    """A mapping of str -> str; values keep their node for later checks."""
    entries = mapping(node, node.keys if node.is_mapping else (), problems, what)
    if entries is BAD:
        return BAD
    out: dict[str, tuple[Node, str]] = {}
    for key, value_node in entries.items():
        value = string(value_node, problems, f"{what}.{key}")
        if value is not BAD:
            out[key] = (node.keys[key], value)
    return out
