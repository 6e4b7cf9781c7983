"""reconciler lock: freeze an environment (no deploys) with a reason, or show locks."""

from __future__ import annotations

import time

from reconciler.cli.commands._agent import add_repo_arguments, state_location
from reconciler.cli.commands._common import add_env_positional, choose_env


def add_arguments(parser) -> None:
    add_repo_arguments(parser)
    add_env_positional(parser, "environment to freeze (with --reason: optional when the repository has only one)")
    parser.add_argument("--reason", help="why (shown to everyone, recorded in status)")
    parser.add_argument("--by", help="who (default: user@host)")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def run(args) -> int:
    from reconciler.adapters.locks import Locks

    location = state_location(args)
    locks = Locks(location.path)
    if args.reason:
        choose_env(args)
        info = locks.freeze(args.env, args.reason, args.by)
        print(f"{args.env}: frozen by {info.by} at {_when(info.since)}: {info.reason}")
        print(f"state: {location.describe()}")
        holder = locks.holder(args.env)
        if holder is not None:
            print(f"note: a reconcile of {holder.commit[:12]} is in progress (pid {holder.pid} on {holder.host}); it finishes, none follows")
        return 0
    names = [args.env] if args.env else locks.environments()
    print(f"state: {location.describe()}")
    if not names:
        print("no locks, no freezes")
    for env in names:
        freeze, holder = locks.frozen(env), locks.holder(env)
        if freeze:
            print(f"{env}: FROZEN by {freeze.by} since {_when(freeze.since)}: {freeze.reason}")
        if holder:
            stale = " (stale: its agent is gone)" if locks.is_stale(holder) else ""
            print(f"{env}: reconciling {holder.commit[:12]} since {_when(holder.started)}, pid {holder.pid} on {holder.host}, heartbeat {_when(holder.heartbeat)}{stale}")
        if not freeze and not holder:
            print(f"{env}: free")
    return 0
