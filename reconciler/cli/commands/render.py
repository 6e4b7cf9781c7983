"""reconciler render: print an environment (or one service) fully resolved.

What a reviewer needs to see what will run: reconciler.yaml's defaults and the
model's own defaults applied, host groups expanded, durations in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from reconciler.core import model, schema
from reconciler.cli.commands._source import add_source_arguments, load_snapshot

HELP = "print an environment or a service with every default applied"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", help="environment to render (default: the only one, else required)")
    parser.add_argument("--service", help="render only this service")
    parser.add_argument("--json", action="store_true", help="JSON instead of YAML")
    add_source_arguments(parser)


def resolved(value):
    """Plain data for printing: pairs become mappings, images their reference."""
    if isinstance(value, model.ImageRef):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {f.name: resolved(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: resolved(v) for k, v in value}
        return [resolved(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    snapshot = load_snapshot(args)
    names = schema.list_environments(snapshot)
    name = args.env or (names[0] if len(names) == 1 else None)
    if name is None:
        print(f"reconciler render: choose one with --env: {', '.join(names) or '(none found)'}", file=sys.stderr)
        return 1
    environment = schema.load_environment(snapshot, name)
    data = resolved(environment)
    if args.service:
        try:
            data = resolved(environment.service(args.service))
        except KeyError:
            print(f"reconciler render: no service {args.service!r} in {name}", file=sys.stderr)
            return 1
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=False)
        print()
    else:
        from ruamel.yaml import YAML

        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.width = 4096  # an image reference stays on one line
        yaml.sort_base_mapping_type_on_output = False
        yaml.dump(data, sys.stdout)
    return 0
