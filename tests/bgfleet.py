"""Shared by the blue-green, canary and mirror fleet tests and their benches
(bench/router.py, canary.py, mirror.py): the sandbox's routers as an
environment's ``router:`` block, the environment file with an exposed
service, and a watcher of the agent's journal.  The bounded load generator
is ``tests.loadgen``'s.
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pygit2

from reconciler.adapters.journal import Journal
from reconciler.core import router as rt
from reconciler.core.model import Host, RouterConfig
from tests.loadgen import Answer, Load, fetch, one_request  # noqa: F401  (the load generator, shared)

_SIG = pygit2.Signature("test author", "author@reconciler.invalid")


def router_block(sandbox) -> str:
    """The ``router:`` block describing every sandbox host's HAProxy, ``{host}``/``{address}`` filled in per host."""
    first = sandbox.hosts[0]
    r = first.router

    def general(value: str) -> str:
        return value.replace(f"/{first.name}/", "/{host}/").replace(first.address, "{address}")

    config = RouterConfig(bind=general(f"{r.address}:{r.port}"), admin=r.admin, config_file=general(r.config_file),
                          reload=general(r.reload_command), socket=general(r.socket),
                          state_file=general(r.state_file), log=r.log)
    for h in sandbox.hosts:  # the one block must say each host's own files
        host = Host(h.name, h.address)
        assert rt.settings_for(config, host) == h.router.settings(), h.name
        assert rt.access_fields(config, host)["config_file"] == h.router.config_file
        assert rt.access_fields(config, host)["reload_command"] == h.router.reload_command
    return (f'router:\n  bind: "{config.bind}"\n  admin: {config.admin}\n  config_file: {config.config_file}\n'
            f'  reload: "{config.reload}"\n  socket: {config.socket}\n  state_file: {config.state_file}\n'
            f'  log: {config.log}\n')


def write_environment(path: Path, env: str, sandbox, services_yaml: str, *, message: str,
                      router: str | None = None) -> str:
    """environment.yaml with the sandbox's hosts, its routers (or ``router``, a block) and these services; committed."""
    hosts = "\n".join(f"  {h.name}: {{address: {h.address}, port: {h.port}, user: {h.user}}}" for h in sandbox.hosts)
    (path / "environments" / env / "environment.yaml").write_text(
        f"hosts:\n{hosts}\n{router or router_block(sandbox)}services:\n"
        + textwrap.indent(textwrap.dedent(services_yaml).strip(), "  ") + "\n")
    repo = pygit2.Repository(str(path))
    repo.index.add_all()
    repo.index.write()
    tree = repo.index.write_tree()
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", _SIG, _SIG, message, tree, parents))


def exposed_web(image: str, hostname: str, *, deadline: str = "20s", interval: str = "500ms", successes: int = 2,
                drain: str = "10s", rollout: str | None = "{batch_size: 1}", expose: str = "", more: str = "") -> str:
    """A ``web`` service behind the routers at ``hostname``, for ``write_environment``: ``expose``
    more keys of its ``expose:`` (``mirror: {...}``), ``rollout`` None for the default, ``more``
    more lines of the service (keys of ``web:``)."""
    keys = f", {expose}" if expose else ""
    rollout_line = f"\n      rollout: {rollout}" if rollout else ""
    lines = textwrap.indent(textwrap.dedent(more), "      ") if more.strip() else ""
    return f"""
    web:
      image: {image}
      hosts: all
      expose: {{hosts: [{hostname}], port: 8080, drain: {drain}{keys}}}
      health: {{type: http, path: /health, interval: {interval}, successes: {successes}, deadline: {deadline}}}{rollout_line}
      stop_timeout: 2s
{lines}"""


class JournalWatcher(threading.Thread):
    """Every record of the environment's journal, across runs, polled every 20 ms (bounded: 15 minutes)."""

    def __init__(self, state_dir: Path, env: str) -> None:
        super().__init__(daemon=True)
        self.journal = Journal(state_dir, env)
        self.since = time.time()  # records of runs before this one are not ours
        self.records: dict[tuple[str, int], dict] = {}  # (run id, index) -> record
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def poll(self) -> None:
        state = self.journal.load()
        if state is None:
            return
        with self._lock:
            for i, record in enumerate(state.records):
                if record.get("at", 0) >= self.since:
                    self.records.setdefault((state.run_id, i), dict(record, run_id=state.run_id))

    def run(self) -> None:
        deadline = time.monotonic() + 900
        while not self.stopping.is_set() and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.02)

    def seen(self, event: str, step: str, host: str | None = None) -> list[dict]:
        with self._lock:
            return [r for r in self.records.values()
                    if r.get("event") == event and r.get("step") == step and (host is None or r.get("host") == host)]

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self.poll()
