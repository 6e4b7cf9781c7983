"""reconciler unlock: lift a freeze and nudge the agent."""

from __future__ import annotations

from reconciler.cli.commands._agent import add_repo_arguments, git_dir, state_location
from reconciler.cli.commands._common import add_env_positional, choose_env


def add_arguments(parser) -> None:
    add_repo_arguments(parser)
    add_env_positional(parser, "environment to unfreeze")
    parser.add_argument("--socket", help="the agent's nudge socket (default: <git dir>/reconciler.sock)")


def run(args) -> int:
    from reconciler.adapters.locks import Locks
    from reconciler.agent.triggers import default_socket_path, send_nudge

    choose_env(args)
    location = state_location(args)
    previous = Locks(location.path).unfreeze(args.env)
    if previous is None:
        print(f"{args.env}: was not frozen (state: {location.describe()})")
        return 0
    print(f"{args.env}: unfrozen (was frozen by {previous.by}: {previous.reason})")
    if not send_nudge(args.socket or default_socket_path(git_dir(args.repo)), f"unlock {args.env}"):
        print("note: no agent is listening; it reconciles when it starts")
    return 0
