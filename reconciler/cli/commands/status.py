"""reconciler status: the agent's view of an environment (what it last
attempted and applied, a stalled commit, a freeze, a reconcile running now),
then per host and service what runs, at which digest, and drift.

The agent's view is read from its state directory, found the way every
command finds it (``_agent.resolve_state``), so a shell sees what the agent
under the systemd unit sees.  The hosts' part is asked of the running agent
when it owns the same shape of environment (``_observe``: observed on its
connections, now), else observed from here over SSH.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# journal and locks are the standard library only; the SSH side (fleet) and
# the report are imported by run(), so `status --help` stays instant.
from reconciler.adapters import hook_files
from reconciler.adapters.journal import Status, read_status
from reconciler.adapters.locks import Freeze, LockInfo, Locks, pid_alive
from reconciler.cli.commands._agent import StateLocation, add_state_argument, git_dir, read_pointer, state_location
from reconciler.cli.commands._common import add_target_arguments, load_target
from reconciler.cli.commands._observe import add_agent_argument


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    add_state_argument(parser)
    add_agent_argument(parser)
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output: {environment, desired, agent, hosts, observed}")
    parser.add_argument("--all", action="store_true", help="include retired containers kept for rollback")


@dataclass(frozen=True)
class AgentProcess:
    """Who last recorded the state location (the pointer), and whether it still runs."""

    pid: int
    host: str
    since: float
    running: bool | None  # None: on another machine, cannot tell


@dataclass(frozen=True)
class AgentView:
    environment: str
    state: StateLocation
    status: Status
    freeze: Freeze | None
    holder: LockInfo | None
    holder_stale: bool
    agent: AgentProcess | None
    unreadable: str | None = None  # a state file this user may not read
    hooks: tuple[str, ...] = ()  # what is wrong with the repository's hooks (hook_files), none: current


def agent_view(gdir: Path, location: StateLocation, env: str) -> AgentView:
    """Everything the agent keeps about ``env``, read from its state directory."""
    locks = Locks(location.path)
    pointer = read_pointer(gdir)
    agent = None
    if pointer is not None and Path(pointer["state_dir"]) == location.path:
        here = pointer.get("host") == locks.hostname
        agent = AgentProcess(int(pointer.get("pid", 0)), str(pointer.get("host")), float(pointer.get("written", 0)),
                             pid_alive(int(pointer.get("pid", 0))) if here else None)
    hooks = tuple(h.problem() for h in hook_files.installed(gdir) if h.problem())
    try:
        holder = locks.holder(env)
        return AgentView(env, location, read_status(location.path, env), locks.frozen(env), holder,
                         holder is not None and locks.is_stale(holder), agent, hooks=hooks)
    except PermissionError as exc:
        # Written 0600 by the agent's user: say which file, do not hide the rest.
        return AgentView(env, location, Status(env), None, None, False, agent,
                         unreadable=f"{exc.filename}: permission denied", hooks=hooks)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "none"


def agent_view_text(view: AgentView) -> str:
    """The agent's view as aligned lines (pure)."""
    st = view.status
    lines = [f"agent (state {view.state.describe()}):"]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label + ':':<16}{value}")

    if view.agent is not None:
        running = {True: "running", False: "not running", None: "on another machine"}[view.agent.running]
        row("agent", f"pid {view.agent.pid} on {view.agent.host}, started {_when(view.agent.since)} ({running})")
    if view.unreadable:
        row("unreadable", view.unreadable)
    f = view.freeze
    row("freeze", f"FROZEN by {f.by} since {_when(f.since)}: {f.reason}" if f else "none")
    h = view.holder
    row("reconciling", f"{h.commit[:12]} since {_when(h.started)}, pid {h.pid} on {h.host}, heartbeat {_when(h.heartbeat)}"
        + (" (stale: its agent is gone)" if view.holder_stale else "") if h else "none")
    attempted = _short(st.last_attempted)
    if st.last_attempted:
        attempted += f" ({st.result or '?'}, {st.reason or '?'}, at {_when(st.at)})"
    row("last attempted", attempted)
    row("last applied", _short(st.last_applied))
    stalled = "none"
    if st.stalled_commit:
        message = (st.message or "").strip().splitlines()
        stalled = f"{st.stalled_commit[:12]}: {st.reason or 'Stalled'}" + (f": {message[0]}" if message else "")
    row("stalled", stalled)
    for problem in view.hooks or ("current",):
        row("hooks", problem)
    return "\n".join(lines)


def agent_view_json(view: AgentView) -> dict:
    return {
        "state_dir": str(view.state.path),
        "state_source": view.state.source,
        "agent": asdict(view.agent) if view.agent else None,
        "last_attempted": view.status.last_attempted,
        "last_applied": view.status.last_applied,
        "stalled_commit": view.status.stalled_commit,
        "result": view.status.result,
        "reason": view.status.reason,
        "message": view.status.message,
        "at": view.status.at,
        "frozen": asdict(view.freeze) if view.freeze else None,
        "reconciling": {**asdict(view.holder), "stale": view.holder_stale} if view.holder else None,
        "unreadable": view.unreadable,
        "hooks": list(view.hooks),
    }


def run(args) -> int:
    from reconciler.cli.commands import _observe
    from reconciler.core import report

    target = load_target(args)
    way = _observe.through_agent(args, target, routers=False)
    if isinstance(way, _observe.FromAgent):
        view = agent_view(git_dir(args.repo), state_location(args), target.environment.name)
        env, rows = way.environment, report.running_rows(way.environment, way.hosts)
    else:
        view, env, rows = one_shot(args, target)
    _observe.say(way)
    if args.json:
        print(json.dumps({"environment": env.name, "desired": target.revision, "agent": agent_view_json(view), "hosts": rows,
                          "observed": way.json()}, indent=2, sort_keys=True))
    else:
        print(agent_view_text(view))
        print(f"{env.name} (desired @ {target.revision[:12]}):")
        print(report.running_text(rows, include_retired=args.all))
    return 0


def one_shot(args, target) -> tuple[AgentView, object, list[dict]]:
    """The hosts opened and observed from here, in the background while the agent's view is read."""
    env = target.environment
    with target.observing(lambda driver: driver.observe(), args.timeout) as observations:
        from reconciler.adapters import secret_files
        from reconciler.core import report

        view = agent_view(git_dir(args.repo), state_location(args), env.name)
        observed = observations.result()
        env = secret_files.resolve(env, observations.hosts())  # host-file secrets hashed as the agent hashes them
        return view, env, report.running_rows(env, observed)
