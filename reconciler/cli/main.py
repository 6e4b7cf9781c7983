"""Command line: parse, call, print.

Each subcommand lives in ``reconciler/cli/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; its one-line help is in
``COMMANDS`` below.  Only the module of the command asked for is imported,
and a module imports nothing heavy at its top or in ``add_arguments``
(pygit2, docker, paramiko, ruamel: inside ``run``), so that
``reconciler --help`` and ``reconciler X --help`` answer at once
(tests/test_cli_contract.py checks which modules they load).

Exit codes: one table for every command, ``reconciler.cli.exitcodes``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reconciler import __version__
from reconciler.cli import exitcodes
from reconciler.errors import ReconcilerError

# name -> one-line help.  Listed here, not discovered, so the help text is
# stable, a stray file cannot become a command, and `reconciler --help`
# needs no command module at all.
COMMANDS: dict[str, str] = {
    "sandbox": "bring the local fleet (hosts, registry, demo images, PostgreSQL) up or down, or show it",
    "validate": "check the environment repository; print every problem as path:line:col (exit 1 when invalid)",
    "render": "print an environment or a service with every default applied, in the keys environment.yaml uses",
    "init": "create a new environment repository (a git repository with one example environment)",
    "plan": "show what apply would change on the hosts (exit 0 in sync, 10 changes pending)",
    "apply": "deploy a commit of the environment repository to its hosts, health-gated, rolling back on failure",
    "status": "show the agent's view (last applied, stalled, frozen, reconciling now) and what runs on each host",
    "rollback": "restore a retained previous version on all hosts, and commit so that git says so",
    "demo": "the product's story on the local fleet: the agent on a copy of desired-state/, three pushes (migration, backup, rollback and revert); --stop stops it",
    "run": "the agent: deploy every push to an environment branch, one reconcile at a time, and watch for drift",
    "lock": "freeze an environment: the agent deploys nothing there until `reconciler unlock`; without --reason, show locks",
    "unlock": "lift an environment's freeze; the agent reconciles it at once",
    "history": "the deployment log from git: every attempt on every commit, who asked, the outcome; --at: what each host ran then",
    "promote": "commit to the target environment the image a service runs healthy in the source environment (from the notes)",
    "revert": "commit the revert of COMMIT onto an environment's branch (comments and layout kept)",
    "install-hooks": "install the hooks: pre-receive validates pushes and refuses rewrites, post-receive nudges the agent",
    "db": "database backups: list them, restore one (asks first), drill a restore into a scratch database",
    "secret": "encrypt a secret from stdin to the environment's age recipients and write it into its YAML in place (comments kept)",
    "maintenance": "maintenance on|off SERVICE: answer every request 503 with a page, or serve again (a commit, then the engine)",
    "pause": "hold new requests of an exposed service at its routers, each at most --deadline (a commit, then the engine)",
    "resume": "release the requests `reconciler pause` holds and serve again (a commit, then the engine)",
    "verify-push": "the pre-receive hook's signature check: refuse a ref update adding commits no trusted key signed (policy.require_signed)",
}

EPILOG = ("exit codes (every command): "
          + "; ".join(f"{code} {text.split(':')[0]}" for code, text in exitcodes.TABLE)
          + ".  Settings: /etc/reconciler/reconciler.toml or $RECONCILER_CONFIG.")


def _load(name: str):
    return importlib.import_module(f"reconciler.cli.commands.{name.replace('-', '_')}")


def _wanted(argv: list[str]) -> str | None:
    """The command named on the line: the first word that is not an option
    (the main parser's own options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reconciler", description="Make Docker hosts run what an environment repository says.",
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = _wanted(argv)
    for name, help_text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = _load(name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run, _parser=command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        from reconciler.cli.commands._common import settle

        return int(args._run(settle(args)) or 0)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else exitcodes.ERROR
    except ReconcilerError as exc:
        print(f"reconciler: error: {exc}", file=sys.stderr)
        return exitcodes.of_error(exc.kind)
    except KeyboardInterrupt:
        print("reconciler: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
