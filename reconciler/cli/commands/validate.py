"""reconciler validate: check an environment repository, report every problem."""

from __future__ import annotations

import argparse
import sys

from reconciler.cli import exitcodes
from reconciler.cli.commands._source import add_source_arguments, load_snapshot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", help="check only this environment (default: every one)")
    add_source_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.core import schema

    snapshot = load_snapshot(args)
    problems = schema.validate(snapshot, args.env)
    if problems:
        print("\n".join(problems))
        print(f"invalid: {len(problems)} problem{'s' if len(problems) != 1 else ''}", file=sys.stderr)
        return exitcodes.ERROR
    names = [args.env] if args.env else list(schema.list_environments(snapshot))
    services = sum(len(schema.load_environment(snapshot, name).services) for name in names)
    at = f" at {snapshot.revision[:12]}" if snapshot.revision else ""
    print(f"ok: {len(names)} environment{'s' if len(names) != 1 else ''}, {services} service{'s' if services != 1 else ''}{at}")
    return exitcodes.OK
