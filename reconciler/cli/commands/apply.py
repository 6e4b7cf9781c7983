"""reconciler apply: make the hosts run what a commit says, through the engine."""

from __future__ import annotations

from reconciler.cli.commands._common import add_target_arguments


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--yes", action="store_true", help="apply without asking")


def run(args) -> int:
    from reconciler.cli.commands import _engine

    # A human asking for a commit retries it even if it failed before.
    return _engine.run_command(args, "deploy", "apply these changes?", force=True)
