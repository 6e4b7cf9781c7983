"""What the agent answers when ``plan`` or ``status`` asks it to observe (``agent.api``).

The agent observes with its own environment, the one it reconciles: the
desired state of the commit it last applied (loaded once per commit and
kept; that is the desired state, not an observation), over the host
connections it keeps
(``fleet.ConnectionCache.borrow``, beside a reconcile that may hold them).
Every answer is observed at request time: one container list per host,
and where exposed services run, its router asked as ``engine.routing``'s
``observe_host`` asks it; nothing observed is ever kept for a later answer.

Not the branch head's: a head the agent has not applied may be one its
gate refuses (unsigned, or forged straight into the repository), and its
hosts and pins must not steer the agent's SSH identity anywhere.  An
agent that has applied nothing yet answers nothing (the CLI observes).

It answers only for a shape it owns (``core.observe_shape``): the CLI's
hosts, pins, router settings and host-file secrets must be the agent's, or
``Refused`` says why (the CLI then observes the hosts itself).  The keyed
digests of host-file secrets come from the agent too, for the secrets of
its own environment only, keyed by its identity (``adapters.secret_files``):
a caller cannot have the agent read any other file.

A host that cannot be observed ends the answer with the error the one-shot
path raises (``fleet``'s all-or-none: every failed host named), which the
API sends as such.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from reconciler.core import observe_shape, observed_codec
from reconciler.core.model import Environment
from reconciler.errors import ReconcilerError, StalledError


class Refused(StalledError):
    """The agent does not answer for this shape (or this environment); the
    message says why.  The API answers it 409, and the CLI observes itself."""


@dataclass(frozen=True)
class Desired:
    """The agent's environment at one commit, with its pins on disk and its shape."""

    commit: str
    environment: Environment
    pins_file: str
    shape: dict


class Observer:
    """``connections``: the agent's ``fleet.ConnectionCache``; ``environments()``:
    the names the agent reconciles; ``state_dir``: where the pins are written."""

    def __init__(self, repo: Path, state_dir: Path, connections, environments: Callable[[], list[str]],
                 log: Callable[..., None] = lambda event, **fields: None) -> None:
        self.repo = Path(repo)
        self.state_dir = Path(state_dir)
        self.connections = connections
        self.environments = environments
        self.log = log
        self._desired: dict[str, Desired] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ the desired state
    def desired(self, env: str) -> Desired:
        from reconciler.adapters.journal import read_status

        if env not in self.environments():
            raise Refused(f"{env}: not an environment this agent reconciles")
        commit = read_status(self.state_dir, env).last_applied
        if commit is None:
            raise Refused(f"{env}: the agent has applied no commit yet (it answers for what it applied)")
        with self._lock:
            kept = self._desired.get(env)
        if kept is not None and kept.commit == commit:
            return kept
        loaded = self._load(env, commit)
        with self._lock:
            self._desired[env] = loaded
        return loaded

    def _load(self, env: str, commit: str) -> Desired:
        from reconciler.adapters import source
        from reconciler.core import schema
        from reconciler.errors import InvalidDesiredState

        try:
            snapshot = source.snapshot_commit(self.repo, commit)
            environment = schema.load_environment(snapshot, env)
        except InvalidDesiredState as exc:
            raise Refused(f"{env}: the agent's desired state at {commit[:12]} does not load: {exc}") from None
        pins = snapshot.files.get(environment.known_hosts)
        if pins is None:
            raise Refused(f"{env}: no known_hosts file at {commit[:12]}")
        # Where the engine's load writes them (engine.recovery.load_desired): the same file, the same connections.
        path = self.state_dir / "known_hosts" / f"{env}-{commit[:12]}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(pins)
            os.replace(tmp, path)
        return Desired(commit, environment, str(path), observe_shape.shape(environment, pins))

    # ------------------------------------------------------------ observing
    def observe(self, env: str, asked: Mapping, *, routers: bool = True) -> dict:
        """The answer's document (``observed_codec``'s hosts, the secrets' digests),
        observed now; ``Refused``, or the hosts' ``ReconcilerError``."""
        started = time.monotonic()
        desired = self.desired(env)
        why = observe_shape.refusal(desired.shape, asked, routers=routers)
        if why is not None:
            raise Refused(why)
        names = sorted(asked["hosts"])
        with self.connections.borrow(desired.environment, desired.pins_file) as drivers:
            observed = self._observe_hosts(desired.environment, {n: drivers[n] for n in names}, routers)
            secrets = self._digests(asked.get("secrets") or [], drivers)
        self.log("api-observe", environment=env, commit=desired.commit, hosts=len(names), routers=routers,
                 took=round(time.monotonic() - started, 3))
        return {"environment": env, "commit": desired.commit, "hosts": observed_codec.encode_hosts(observed),
                "secrets": secrets}

    def _observe_hosts(self, env: Environment, drivers: Mapping, routers: bool) -> dict:
        from reconciler.adapters import fleet
        from reconciler.engine import routing

        def one(driver):
            return routing.observe_host(env, driver) if routers else driver.observe()

        failures, observed = [], {}
        with ThreadPoolExecutor(max_workers=min(fleet.MAX_PARALLEL_CONNECTS, max(1, len(drivers))),
                                thread_name_prefix="api-observe") as pool:
            futures = {name: pool.submit(one, driver) for name, driver in drivers.items()}
            for name, future in futures.items():
                try:
                    observed[name] = future.result()
                except ReconcilerError as exc:
                    failures.append(exc)
        if failures:
            raise fleet.all_failures(failures)
        return observed

    def _digests(self, entries: list, drivers: Mapping) -> list[dict]:
        """Each asked host-file secret's keyed digest (the shape matched: they are the agent's own)."""
        if not entries:
            return []
        from reconciler.adapters import secret_files

        key = secret_files.digest_key(self.connections.identity_file)
        out = []
        for entry in entries:
            values = {h: drivers[h].read_secret_file(entry["file"]).encode() for h in entry["hosts"]}
            out.append({"service": entry["service"], "name": entry["name"],
                        "digest": secret_files.digest(entry["name"], values, key)})
        return out

