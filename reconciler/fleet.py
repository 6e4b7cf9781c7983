"""Opening and observing an environment's hosts, all at once.

One SSH connection per host for the whole run, opened in parallel; if any
host cannot be reached the others are closed again and the error names every
host that failed, so a run either has all its hosts or touches none.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping

from reconciler.errors import HostKeyMismatch, ReconcilerError, UnknownHostKey
from reconciler.hosts import DockerHost
from reconciler.model import Host, ObservedHost
from reconciler.ssh import SSHAccess, connect

# Bounded so that a fleet of many hosts does not open hundreds of handshakes
# at once; SSH connects are mostly waiting on the network, so threads suffice.
MAX_PARALLEL_CONNECTS = 16


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
) -> dict[str, DockerHost]:
    """Connect to every host and check its engine answers, or raise naming each failure."""
    hosts = list(hosts)

    def open_one(host: Host) -> DockerHost:
        conn = connect(access_for(host, identity_file=identity_file, known_hosts_file=known_hosts_file, timeout=timeout))
        driver = DockerHost(host.name, conn)
        try:
            driver.ping()
        except BaseException:
            driver.close()
            raise
        return driver

    opened: dict[str, DockerHost] = {}
    failures: list[ReconcilerError] = []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CONNECTS, max(1, len(hosts)))) as pool:
        futures = [(h, pool.submit(open_one, h)) for h in hosts]
        for host, future in futures:
            try:
                opened[host.name] = future.result()
            except ReconcilerError as exc:
                failures.append(exc)
    if failures:
        close_hosts(opened)
        # A key problem is the most serious finding: report it as such.
        failures.sort(key=lambda e: not isinstance(e, (HostKeyMismatch, UnknownHostKey)))
        first = failures[0]
        if len(failures) == 1:
            raise first
        summary = "\n".join(str(f) for f in failures)
        raise type(first)(f"{len(failures)} hosts failed:\n{summary}", host=None)
    return opened


def close_hosts(hosts: Mapping[str, DockerHost]) -> None:
    for driver in hosts.values():
        try:
            driver.close()
        except Exception:
            pass  # closing is best effort; the process may be ending anyway


def observe_all(hosts: Mapping[str, DockerHost]) -> dict[str, ObservedHost]:
    """Every host's containers, observed in parallel (read-only)."""
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CONNECTS, max(1, len(hosts)))) as pool:
        futures = {name: pool.submit(driver.observe) for name, driver in hosts.items()}
        return {name: future.result() for name, future in futures.items()}
