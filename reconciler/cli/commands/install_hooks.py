"""reconciler install-hooks: put the pre-receive and post-receive hooks in a repository."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from reconciler.cli.commands._agent import git_dir
from reconciler.cli.commands._common import add_repo_argument

HOOKS = ("pre-receive", "post-receive")


def hooks_source() -> Path:
    """The hooks of this installation (package data: reconciler.resources)."""
    from reconciler import resources

    return resources.path("hooks")


def add_arguments(parser) -> None:
    add_repo_argument(parser, positional_alias=True)
    parser.add_argument("--socket", help="the agent's nudge socket (default: <git dir>/reconciler.sock)")
    parser.add_argument("--branches", default="*", help="glob of the environment branches to protect (default: every branch)")
    parser.add_argument("--force", action="store_true", help="replace hooks that are not ours")


def package_dir() -> Path:
    """The ``reconciler`` package directory of this installation: the
    pre-receive hook's checks import exactly it (a wheel's site-packages, an
    editable checkout, or the tree that ran install-hooks)."""
    import reconciler

    return Path(reconciler.__file__).resolve().parent


def render(text: str, *, reconciler: str, python: str, socket: str, branches: str, package: str | None = None) -> str:
    """The hook with the paths of this installation filled in, so it works
    for a pusher whose PATH does not have reconciler on it.  ``reconciler``
    is already shell-quoted."""
    return (
        text.replace("@PACKAGE@", shlex.quote(package or str(package_dir())))
        .replace("@RECONCILER@", reconciler)
        .replace("@PYTHON@", python)
        .replace("@SOCKET@", socket)
        .replace("@BRANCHES@", branches)
    )


def run(args) -> int:
    from reconciler.errors import StalledError
    from reconciler.agent.triggers import default_socket_path

    gdir = git_dir(args.repo)
    target = gdir / "hooks"
    target.mkdir(exist_ok=True)
    exe = Path(sys.executable)
    reconciler = exe.parent / "reconciler"
    command = shlex.quote(str(reconciler)) if reconciler.exists() else f"{shlex.quote(str(exe))} -m reconciler"
    socket = str(Path(args.socket) if args.socket else default_socket_path(gdir))
    for name in HOOKS:
        text = (hooks_source() / name).read_text()
        dest = target / name
        if dest.exists() and "reconciler" not in dest.read_text(errors="replace") and not args.force:
            raise StalledError(f"{dest} exists and is not reconciler's; pass --force to replace it")
        rendered = render(text, reconciler=command, python=str(exe), socket=socket, branches=args.branches)
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(rendered)
        tmp.chmod(0o755)
        os.replace(tmp, dest)
        print(f"installed {dest}")
    return 0
