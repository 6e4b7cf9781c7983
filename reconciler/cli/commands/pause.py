"""reconciler pause SERVICE: hold new requests at the router (each at most --deadline, then 503).

A commit (``expose.pause``) run through the engine: ``_traffic_lever``; ``reconciler resume`` undoes it.
"""

from __future__ import annotations

from reconciler.cli.commands import _traffic_lever


def add_arguments(parser) -> None:
    _traffic_lever.add_arguments(parser, with_deadline=True)


def run(args) -> int:
    return _traffic_lever.lever(args, "pause", {"deadline": args.deadline}, "Pause")
