"""Opening and observing an environment's hosts, all at once.

One SSH connection per host for the whole run, opened in parallel; if any
host cannot be reached the others are closed again and the error names every
host that failed, so a run either has all its hosts or touches none.  Each
``DockerHost`` can reopen its own connection (same pinned access) when it is
lost mid-run.

``start_opening`` connects in the background, and each host goes on with
its own first requests (a one-shot ``plan``: its observation) as soon as its
connection is up, while the caller does the rest of its work.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from reconciler.errors import EngineError, HostKeyMismatch, HostUnreachable, ReconcilerError, UnknownHostKey
from reconciler.core.model import Host
from reconciler.core.managed import ObservedHost
from reconciler.adapters.ssh import SSHAccess, connect

if TYPE_CHECKING:
    # Imported once the SSH handshakes are under way (start_opening): docker-py's
    # import (~50 ms beyond paramiko's) then runs while they wait on their hosts.
    from reconciler.adapters.hosts import DockerHost

# Bounded so that a fleet of many hosts does not open hundreds of handshakes
# at once; SSH connects are mostly waiting on the network, so threads suffice.
MAX_PARALLEL_CONNECTS = 16

Log = Callable[..., None]


def _quiet(event: str, **fields) -> None:
    pass


def access_for(host: Host, *, identity_file: str, known_hosts_file: str, timeout: float = 10.0) -> SSHAccess:
    return SSHAccess(
        host=host.name,
        address=host.address,
        port=host.port,
        user=host.user,
        identity_file=identity_file,
        known_hosts_file=known_hosts_file,
        timeout=timeout,
    )


def open_hosts(
    hosts: Iterable[Host],
    *,
    identity_file: str,
    known_hosts_file: str,
    timeout: float = 10.0,
    log: Log | None = None,
) -> dict[str, DockerHost]:
    """Connect to every host and check its engine answers, or raise naming each failure."""
    drivers, _ = start_opening(hosts, identity_file=identity_file, known_hosts_file=known_hosts_file,
                               timeout=timeout, log=log, then=lambda driver: driver.ping()).result()
    return drivers


def start_opening(
    hosts: Iterable[Host],
    *,
    identity_file: str,
    known_hosts_file: str,
    timeout: float = 10.0,
    log: Log | None = None,
    then: Callable[[DockerHost], object] | None = None,
) -> "Opening":
    """Start connecting to every host in the background (threads), each host
    going on with ``then(driver)`` on its own connection as soon as that is
    up: the caller goes on meanwhile, and ``Opening.result()`` waits."""

    def open_one(host: Host) -> DockerHost:
        access = access_for(host, identity_file=identity_file, known_hosts_file=known_hosts_file, timeout=timeout)
        conn = connect(access)
        try:
            from reconciler.adapters.hosts import DockerHost

            return DockerHost(host.name, conn, reconnect=lambda: connect(access), log=log,
                              docker_socket=host.docker_socket)
        except BaseException:
            conn.close()
            raise

    opening = Opening(hosts, open_one, then)
    # fabric's import (with invoke, ~40 ms) is in the opening threads, after
    # their TCP connects (ssh.connect); docker-py's (~50 ms) here, while the
    # handshakes wait on their hosts, rather than in the first thread whose
    # handshake is done.
    from reconciler.adapters import hosts as _drivers  # noqa: F401
    return opening


class Opening:
    """The hosts of a run being opened in the background, all or none.

    ``result()`` gives every host's driver and what ``then`` returned for it,
    or, if any host failed (to connect, or in ``then``), closes the others and
    raises an error naming every host that failed.  ``close()`` closes every
    connection it opened, waiting for those still opening.
    """

    def __init__(self, hosts: Iterable[Host], open_one: Callable[[Host], DockerHost],
                 then: Callable[[DockerHost], object] | None) -> None:
        self.hosts = list(hosts)
        pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CONNECTS, max(1, len(self.hosts))),
                                  thread_name_prefix="open-host")
        self._futures = {h.name: pool.submit(self._open, open_one, then, h) for h in self.hosts}
        pool.shutdown(wait=False)  # the threads end with their host
        self._closed: set[str] = set()

    @staticmethod
    def _open(open_one, then, host: Host) -> tuple[DockerHost, object]:
        driver = open_one(host)
        try:
            return driver, (then(driver) if then is not None else None)
        except BaseException:
            driver.close()
            raise

    def result(self) -> tuple[dict[str, DockerHost], dict[str, object]]:
        drivers: dict[str, DockerHost] = {}
        outcomes: dict[str, object] = {}
        failures: list[ReconcilerError] = []
        complete = False
        try:
            for name, future in self._futures.items():
                try:
                    drivers[name], outcomes[name] = future.result()
                except ReconcilerError as exc:
                    failures.append(exc)
            complete = not failures
        finally:
            if not complete:  # a failed host, or a bug: the run has none of its hosts
                self.close()
        if failures:
            raise all_failures(failures)
        return drivers, outcomes

    def close(self) -> None:
        for name, future in self._futures.items():
            if name in self._closed or future.exception() is not None:
                continue  # a host that failed closed its own connection
            self._closed.add(name)
            close_hosts({name: future.result()[0]})


def all_failures(failures: list[ReconcilerError]) -> ReconcilerError:
    # A key problem is the most serious finding: report it as such.
    failures = sorted(failures, key=lambda e: not isinstance(e, (HostKeyMismatch, UnknownHostKey)))
    first = failures[0]
    if len(failures) == 1:
        return first
    summary = "\n".join(str(f) for f in failures)
    return type(first)(f"{len(failures)} hosts failed:\n{summary}", host=None)


def close_hosts(hosts: Mapping[str, DockerHost]) -> None:
    for driver in hosts.values():
        try:
            driver.close()
        except Exception:
            pass  # closing is best effort; the process may be ending anyway


def observe_all(hosts: Mapping[str, DockerHost], *, unreachable: list[str] | None = None) -> dict[str, ObservedHost]:
    """Every host's containers, observed in parallel (read-only).

    With an ``unreachable`` list, a host that cannot be reached is named
    there and left out instead of failing the whole observation: for the
    report after a run, which must still say what the others run.
    """
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CONNECTS, max(1, len(hosts)))) as pool:
        futures = {name: pool.submit(driver.observe) for name, driver in hosts.items()}
        observed = {}
        for name, future in futures.items():
            try:
                observed[name] = future.result()
            except HostUnreachable:
                if unreachable is None:
                    raise
                unreachable.append(name)
        return observed


class ConnectionCache:
    """Host connections kept open between reconciles, for the agent.

    Opening is most of a drift check's cost (an SSH handshake, then a
    `docker system dial-stdio` on the host for the first Engine API call), so
    the agent keeps each host's connection for the next reconcile.  A cached
    connection is reused only for the same environment, host address, user
    and *the same pinned keys*: a commit that changes a pin gets a fresh
    connection, verified against the new pin.

    A cached connection is tested before it is handed out (the engine must
    answer on it within the SSH timeout): one that fails, because the host
    restarted or went down and came back while the agent was idle, is
    evicted and opened again once; only if that fails too is the host
    unreachable.

    An open paramiko connection is not free while idle (its transport thread
    wakes several times a second), so connections unused for ``idle``
    seconds are closed; never one a reconcile holds (between ``open`` and
    ``release``).  The agent's default (600 s) outlasts the default drift
    interval, so drift checks find their connections open.

    ``borrow`` hands the same connections to a reader beside whatever holds
    them (the agent's API observing for ``plan``): leases are counted, so a
    connection stays open while any holder has it.  Two threads may use one
    host's driver at once (``hosts.DockerHost``: every request is its own
    channel, a reopen happens once).  Opening is one at a time per
    environment (``_opening``): a reconcile and a borrow that both find a
    host closed wait for one handshake, not two.
    """

    def __init__(self, *, identity_file: str, timeout: float = 10.0, idle: float = 60.0, log: Log | None = None) -> None:
        self.identity_file = identity_file
        self.timeout = timeout
        self.idle = idle
        self.log = log or _quiet
        self._open: dict[tuple, DockerHost] = {}
        self._used: dict[tuple, float] = {}
        self._leased: dict[tuple, int] = {}  # key -> holders (reconciles and borrows)
        self._borrowed: dict[tuple, int] = {}  # key -> borrows among them
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}
        self._timer: threading.Timer | None = None

    @staticmethod
    def _keys(environment, known_hosts_file: str) -> Callable[[Host], tuple]:
        pins = hashlib.sha256(Path(known_hosts_file).read_bytes()).hexdigest()
        return lambda h: (environment.name, h.name, h.address, h.port, h.user, h.docker_socket, pins)

    def _opening_lock(self, environment: str) -> threading.Lock:
        with self._lock:
            return self._opening.setdefault(environment, threading.Lock())

    def open(self, environment, known_hosts_file: str) -> dict[str, DockerHost]:
        with self._opening_lock(environment.name):
            return self._open_now(environment, known_hosts_file)

    def _open_now(self, environment, known_hosts_file: str) -> dict[str, DockerHost]:
        key = self._keys(environment, known_hosts_file)
        cached: dict[str, DockerHost] = {}
        with self._lock:
            for host in environment.hosts:
                driver = self._open.pop(key(host), None)
                if driver is not None:
                    cached[host.name] = driver
                self._used.pop(key(host), None)
            self._forget_others(environment.name, {key(h) for h in environment.hosts})
        reused = self._still_working(environment.name, cached)
        missing = [h for h in environment.hosts if h.name not in reused]
        try:
            opened = open_hosts(missing, identity_file=self.identity_file, known_hosts_file=known_hosts_file,
                                timeout=self.timeout, log=self.log) if missing else {}
        except ReconcilerError:
            close_hosts(reused)
            raise
        hosts = {**reused, **opened}
        with self._lock:
            for host in environment.hosts:
                self._open[key(host)] = hosts[host.name]
                self._used[key(host)] = time.monotonic()
                self._leased[key(host)] = self._leased.get(key(host), 0) + 1
        return {h.name: hosts[h.name] for h in environment.hosts}

    @contextlib.contextmanager
    def borrow(self, environment, known_hosts_file: str):
        """The environment's kept connections (host name -> driver), held for
        the block beside any reconcile that holds them too.  A kept one is
        handed out as it is, untested: the caller's own read (retried once on
        a reopened connection) is the test.  Hosts with none kept are opened
        and kept after; nothing else of the cache is touched (a reconcile of
        an older commit may hold connections this environment no longer has)."""
        key = self._keys(environment, known_hosts_file)
        drivers = self._lease_kept(environment, key)
        if drivers is None:
            with self._opening_lock(environment.name):
                drivers = self._lease_kept(environment, key, partial=True)  # opened meanwhile?
                missing = [h for h in environment.hosts if drivers.get(h.name) is None]
                if missing:
                    drivers.update(self._open_missing(missing, key, known_hosts_file, leased=drivers))
        keys = [key(h) for h in environment.hosts]
        with self._lock:
            for k in keys:
                self._borrowed[k] = self._borrowed.get(k, 0) + 1
        try:
            yield drivers
        finally:
            # By key, not by driver: a reconcile's open may have the driver out
            # of the table for its test at this moment.
            with self._lock:
                now = time.monotonic()
                for k in keys:
                    for counts in (self._borrowed, self._leased):
                        if counts.get(k, 0) > 1:
                            counts[k] -= 1
                        else:
                            counts.pop(k, None)
                    if k in self._open:
                        self._used[k] = now
                if self._timer is None and self._open:
                    self._start_timer()

    def _lease_kept(self, environment, key, *, partial: bool = False) -> dict[str, DockerHost] | None:
        """The kept drivers of ``environment``'s hosts, leased; None when one is
        missing, unless ``partial`` (then those found, leased)."""
        with self._lock:
            found = {h.name: d for h in environment.hosts if (d := self._open.get(key(h))) is not None}
            if len(found) < len(environment.hosts) and not partial:
                return None
            for host in environment.hosts:
                if host.name in found:
                    self._leased[key(host)] = self._leased.get(key(host), 0) + 1
            return found

    def _open_missing(self, missing: list[Host], key, known_hosts_file: str, *, leased) -> dict[str, DockerHost]:
        try:
            opened = open_hosts(missing, identity_file=self.identity_file, known_hosts_file=known_hosts_file,
                                timeout=self.timeout, log=self.log)
        except ReconcilerError:
            self.release(leased)  # those found kept: in the table (the opening lock is held)
            raise
        with self._lock:
            for host in missing:
                self._open[key(host)] = opened[host.name]
                self._used[key(host)] = time.monotonic()
                self._leased[key(host)] = self._leased.get(key(host), 0) + 1
        return opened

    def _still_working(self, environment: str, cached: Mapping[str, DockerHost]) -> dict[str, DockerHost]:
        """The cached connections whose engine answers; the others closed."""
        if not cached:
            return {}

        def test(driver: DockerHost) -> ReconcilerError | None:
            try:
                driver.check(timeout=self.timeout)
            except (HostUnreachable, EngineError) as exc:
                return exc
            return None

        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CONNECTS, len(cached))) as pool:
            failures = dict(zip(cached, pool.map(test, cached.values())))
        working = {}
        for name, driver in cached.items():
            if failures[name] is None:
                working[name] = driver
                continue
            self.log("connection-evicted", environment=environment, host=name, error=str(failures[name]))
            close_hosts({name: driver})
        return working

    def release(self, hosts: Mapping[str, DockerHost]) -> None:
        """Kept open for the next reconcile, until ``idle`` seconds pass unused."""
        released = {id(d) for d in hosts.values()}
        with self._lock:
            now = time.monotonic()
            for key, driver in self._open.items():
                if id(driver) in released:
                    self._used[key] = now
                    if self._leased.get(key, 0) > 1:
                        self._leased[key] -= 1
                    else:
                        self._leased.pop(key, None)
            if self._timer is None:
                self._start_timer()

    def _start_timer(self) -> None:
        self._timer = threading.Timer(self.idle, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self._timer = None
            cutoff = time.monotonic() - self.idle
            for key in [k for k, used in self._used.items() if used <= cutoff and k in self._open and k not in self._leased]:
                close_hosts({key[1]: self._open.pop(key)})
                self._used.pop(key, None)
            if self._open:
                self._start_timer()

    def _forget_others(self, environment: str, keep: set) -> None:
        # One a borrow still holds (beside this reconcile) is left to the idle timer.
        for stale in [k for k in self._open if k[0] == environment and k not in keep and k not in self._borrowed]:
            close_hosts({stale[1]: self._open.pop(stale)})
            self._used.pop(stale, None)
            self._leased.pop(stale, None)

    def close_all(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            close_hosts({str(k): d for k, d in self._open.items()})
            self._open.clear()
            self._used.clear()
            self._leased.clear()
            self._borrowed.clear()
