"""reconciler install-hooks: put the pre-receive and post-receive hooks in a repository."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from reconciler.cli.commands._agent import git_dir
from reconciler.cli.commands._common import add_repo_argument

def add_arguments(parser) -> None:
    add_repo_argument(parser, positional_alias=True)
    parser.add_argument("--socket", help="the agent's nudge socket (default: <git dir>/reconciler.sock)")
    parser.add_argument("--branches", default="*", help="glob of the environment branches to protect (default: every branch)")
    parser.add_argument("--force", action="store_true", help="replace hooks that are not ours")
    parser.add_argument("--allowed-signers", help="the trusted SSH keys file (outside the repository) the hook checks signatures "
                                                  "against: written to git config reconciler.allowedSigners")
    parser.add_argument("--agent-principal", help="the agent's principal in that file, the only signer the hook accepts for "
                                                  "its notes: written to git config reconciler.agentPrincipal")


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
    from reconciler.adapters import hook_files
    from reconciler.agent.triggers import default_socket_path
    from reconciler.errors import StalledError

    gdir = git_dir(args.repo)
    target = gdir / "hooks"
    target.mkdir(exist_ok=True)
    exe = Path(sys.executable)
    reconciler = exe.parent / "reconciler"
    command = shlex.quote(str(reconciler)) if reconciler.exists() else f"{shlex.quote(str(exe))} -m reconciler"
    socket = str(Path(args.socket) if args.socket else default_socket_path(gdir))
    for name in hook_files.HOOKS:
        text = (hook_files.templates() / name).read_text()
        dest = target / name
        if dest.exists() and "reconciler" not in dest.read_text(errors="replace") and not args.force:
            raise StalledError(f"{dest} exists and is not reconciler's; pass --force to replace it")
        rendered = hook_files.with_marker(name, render(text, reconciler=command, python=str(exe), socket=socket,
                                                       branches=args.branches))
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(rendered)
        tmp.chmod(0o755)
        os.replace(tmp, dest)
        print(f"installed {dest}")
    trust_root(gdir, args.allowed_signers, args.agent_principal)
    return 0


def trust_root(gdir: Path, allowed_signers: str | None, agent_principal: str | None) -> None:
    """The hook's trust root in the repository's git config (which no push
    can change): the allowed_signers file, and the agent's principal in it."""
    import pygit2

    from reconciler.errors import StalledError

    if not allowed_signers and not agent_principal:
        return
    repo = pygit2.Repository(str(gdir))
    path = Path(allowed_signers).resolve() if allowed_signers else None
    if path is not None and not path.is_file():
        raise StalledError(f"--allowed-signers {allowed_signers}: no such file")
    if agent_principal:
        try:
            signers = path or Path(repo.config["reconciler.allowedSigners"])
        except KeyError:
            raise StalledError("--agent-principal needs --allowed-signers (the file that gives the agent's key that principal)") from None
        principals = {p for line in signers.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
                      for p in line.split()[0].split(",")}
        if agent_principal not in principals:
            raise StalledError(f"--agent-principal {agent_principal}: no such principal in {signers}")
    if path is not None:
        repo.config["reconciler.allowedSigners"] = str(path)
        print(f"git config reconciler.allowedSigners {path}")
    if agent_principal:
        repo.config["reconciler.agentPrincipal"] = agent_principal
        print(f"git config reconciler.agentPrincipal {agent_principal}")
