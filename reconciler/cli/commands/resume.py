"""reconciler resume SERVICE: release the requests ``reconciler pause`` holds; serve again.

A commit (``expose.pause`` removed) run through the engine: ``_traffic_lever``.
"""

from __future__ import annotations

from reconciler.cli.commands import _traffic_lever


def add_arguments(parser) -> None:
    _traffic_lever.add_arguments(parser)


def run(args) -> int:
    return _traffic_lever.lever(args, "pause", None, "Resume")
