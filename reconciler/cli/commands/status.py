"""reconciler status: per host and service, what runs, at which digest, and drift."""

from __future__ import annotations

import json

from reconciler.adapters import fleet

from reconciler.core import report
from reconciler.cli.commands._common import add_target_arguments, load_target

HELP = "show what runs on each host: digest, revision, health, drift"


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--all", action="store_true", help="include retired containers kept for rollback")


def run(args) -> int:
    target = load_target(args)
    env = target.environment
    with target.connect(args.timeout) as hosts:
        rows = report.running_rows(env, fleet.observe_all(hosts))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        print(f"{env.name} (desired @ {target.revision[:12]}):")
        print(report.running_text(rows, include_retired=args.all))
    return 0
