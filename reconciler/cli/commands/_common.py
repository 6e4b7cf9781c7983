"""The options every command spells the same way, and how they are settled.

- ``--repo``: the environment repository, bare or not; default
  ``$RECONCILER_REPO``, else the current directory.
- ``--env``: the environment; optional when the repository (at the commit
  used) has only one.
- ``--rev``/``--commit``: the commit (default HEAD).
- ``--identity``, ``--timeout``: the SSH key and connect timeout; default
  ``$RECONCILER_IDENTITY``, then the settings file (``reconciler.cli.config``),
  then none / 10 s.

``settle(args)`` fills the defaults after parsing (main calls it for every
command), so a test or a script that builds the argv gets exactly what a
person typing it gets.  Nothing here imports pygit2, docker or paramiko:
``add_arguments`` runs for ``--help``.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_TIMEOUT = 10.0
DEFAULT_KEEP_CONNECTIONS = 600.0


def add_repo_argument(parser: argparse.ArgumentParser, *, positional_alias: bool = False) -> None:
    parser.add_argument("--repo", default=None, help="environment repository, bare or not (default: $RECONCILER_REPO, else .)")
    if positional_alias:
        # The old spelling, kept so that scripts and installed hooks keep working.
        parser.add_argument("legacy_repo", nargs="?", default=None, metavar="REPO",
                            help="deprecated: the same as --repo REPO")


def add_env_argument(parser: argparse.ArgumentParser, what: str = "environment") -> None:
    parser.add_argument("--env", help=f"{what} (optional when the repository has only one)")


def add_env_positional(parser: argparse.ArgumentParser, what: str) -> None:
    """``--env E`` and, as before, a plain ``E`` (lock, unlock)."""
    add_env_argument(parser, what)
    parser.add_argument("env_name", nargs="?", default=None, metavar="ENV", help="the same as --env ENV")


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--identity", default=None,
                        help="SSH private key for the hosts (default: $RECONCILER_IDENTITY, else identity in the settings file)")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"SSH connect timeout per host, seconds (default: timeouts.connect in the settings file, else {DEFAULT_TIMEOUT:g})")


def add_target_arguments(parser: argparse.ArgumentParser, *, worktree: bool = False) -> None:
    add_repo_argument(parser)
    add_env_argument(parser)
    parser.add_argument("--rev", "--commit", dest="rev", default="HEAD", help="commit to use (default: HEAD)")
    if worktree:
        parser.add_argument("--worktree", action="store_true", help="use the working tree, uncommitted edits included (preview only)")
    add_identity_arguments(parser)


def usage(args: argparse.Namespace, message: str):
    """A usage error (exit 2), reported by the command's own parser."""
    parser = getattr(args, "_parser", None)
    if parser is not None:
        parser.error(message)  # prints the usage line and exits 2
    print(f"reconciler: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def settle(args: argparse.Namespace, environ=os.environ) -> argparse.Namespace:
    """Fill every default that depends on the environment or the settings
    file; the settings file is read only when a value is still missing."""
    legacy = getattr(args, "legacy_repo", None)
    if legacy is not None:
        if args.repo is not None and args.repo != legacy:
            usage(args, f"give the repository once: --repo {args.repo} or {legacy}")
        args.repo = legacy
    named = getattr(args, "env_name", None)
    if named is not None:
        if args.env is not None and args.env != named:
            usage(args, f"give the environment once: --env {args.env} or {named}")
        args.env = named
    if hasattr(args, "repo") and args.repo is None:
        args.repo = environ.get("RECONCILER_REPO") or "."
    settings = None

    def setting(name):
        nonlocal settings
        if settings is None:
            from reconciler.cli import config

            settings = config.load(environ)
        return getattr(settings, name)

    if hasattr(args, "identity") and not args.identity:
        args.identity = environ.get("RECONCILER_IDENTITY") or setting("identity")
    if hasattr(args, "timeout") and args.timeout is None:
        args.timeout = setting("connect_timeout") or DEFAULT_TIMEOUT
    if hasattr(args, "keep_connections") and args.keep_connections is None:
        args.keep_connections = setting("keep_connections") or DEFAULT_KEEP_CONNECTIONS
    return args


def environments(repo: str, rev: str = "HEAD", *, worktree: bool = False) -> tuple[str, ...]:
    """The environment names the repository has at ``rev`` (or in its working tree)."""
    from reconciler.adapters import source
    from reconciler.core import schema

    if worktree:
        return schema.list_environments(source.snapshot_worktree(repo))
    return schema.list_environments(source.snapshot_commit(repo, source.head_commit(repo, rev)))


def choose_env(args: argparse.Namespace, *, rev: str | None = None) -> str:
    """``--env``, or the repository's only environment; with several and no
    ``--env``, a usage error listing them.  Sets ``args.env``."""
    if args.env:
        return args.env
    names = environments(args.repo, rev or getattr(args, "rev", None) or "HEAD", worktree=getattr(args, "worktree", False))
    if len(names) != 1:
        usage(args, f"--env is needed: {args.repo} has {len(names)} environments ({', '.join(names) or 'none'})")
    args.env = names[0]
    return args.env


def require_identity(args: argparse.Namespace) -> str:
    if not args.identity:
        from reconciler.cli import config
        from reconciler.errors import StalledError

        where = config.location() or config.DEFAULT_PATH
        raise StalledError(f"no SSH identity: pass --identity FILE, set $RECONCILER_IDENTITY, or set identity in {where}")
    return args.identity


def load_target(args: argparse.Namespace):
    """The environment at the chosen commit with its pinned keys (engine.target)."""
    from reconciler.engine.target import load_target as load

    choose_env(args)
    require_identity(args)
    return load(args)


def finish(result, operation: str) -> int:
    """The exit code of an engine run; a freeze or a held lock (waiting) and a
    run that could not start are raised, so main reports them the one way."""
    from reconciler.cli import exitcodes
    from reconciler.cli.commands import _engine
    from reconciler.errors import WaitingError

    if result.kind == "waiting" or result.result in ("frozen", "locked"):
        raise WaitingError(f"{result.environment}: {result.result} ({result.reason}): {result.message}")
    _engine.fail_on(result)
    return exitcodes.of_result(result, operation)


def is_tty() -> bool:
    return sys.stdout.isatty()
