"""Command line: parse, call, print.  Each subcommand lives in
``reconciler/commands/<name>.py`` and exposes ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``; this module only dispatches, importing the chosen
command alone so that ``reconciler validate`` never pays for docker or fabric.

Exit codes: 0 success / in sync, 1 error, 2 changes pending (``plan``) or
invalid input (``validate``), 3 a deploy failed and was rolled back,
4 waiting (locked or frozen).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reconciler import __version__
from reconciler.errors import ReconcilerError

# name -> module under reconciler.cli.commands.  Listed here, not discovered, so
# the help text is stable and a stray file cannot become a command.
COMMANDS = (
    "sandbox",
    "validate",
    "render",
    "init",
    "plan",
    "apply",
    "status",
    "rollback",
    "demo",
    "run",
    "lock",
    "unlock",
    "history",
    "promote",
    "revert",
    "install-hooks",
    "db",
)

EXIT_ERROR = 1
EXIT_WAITING = 4


def _load(name: str):
    return importlib.import_module(f"reconciler.cli.commands.{name.replace('-', '_')}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reconciler", description="Make Docker hosts run what an environment repository says.")
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only import the module of the command actually asked for; the others
    # get a help line from a light import only when help is requested.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name in COMMANDS:
        if wanted is not None and wanted != name and wanted in COMMANDS:
            sub.add_parser(name)
            continue
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"reconciler.cli.commands.{name}":
                raise
            continue  # command not built yet
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ReconcilerError as exc:
        print(f"reconciler: error: {exc}", file=sys.stderr)
        return EXIT_WAITING if exc.kind == "waiting" else EXIT_ERROR
    except KeyboardInterrupt:
        print("reconciler: interrupted", file=sys.stderr)
        return 130
