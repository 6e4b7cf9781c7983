"""reconciler maintenance on|off SERVICE: every request answered 503 with a page, or served again.

A commit (``expose.maintenance``) run through the engine: ``_traffic_lever``.
"""

from __future__ import annotations

from reconciler.cli.commands import _traffic_lever


def add_arguments(parser) -> None:
    _traffic_lever.add_arguments(parser, with_state=True, with_page=True)


def run(args) -> int:
    if args.switch == "on":
        return _traffic_lever.lever(args, "maintenance", {"page": args.page} if args.page else {}, "Maintenance on")
    return _traffic_lever.lever(args, "maintenance", None, "Maintenance off")
