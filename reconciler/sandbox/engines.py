"""One dockerd per sandbox host, inside the host's network namespace.

Started with ``nsenter --net=`` rather than ``ip netns exec``: the latter
remounts /sys and dockerd then fails with "Devices cgroup isn't mounted".
Each engine puts its containers under cgroup parent ``rcl-hN`` so that
``down`` can find container processes even when their shim is gone.
"""

from __future__ import annotations

import contextlib
import json
import shutil

import docker

from reconciler.sandbox import procs
from reconciler.sandbox.layout import DOCKER_GROUP, REGISTRY, HostLayout

# A first start initialises containerd, the overlay store and iptables in the
# namespace; three at once on two loaded cores took over 45 s.
START_TIMEOUT = 120.0
STATUS_PROBE = 5.0


@contextlib.contextmanager
def client(host: HostLayout, timeout: float = 5.0):
    """A docker-py client on the host's local socket, closed on exit."""
    c = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41", timeout=timeout)
    try:
        yield c
    finally:
        c.close()


def probe(host: HostLayout, limit: float) -> str | None:
    """None when the engine answers a ping on its socket within ``limit`` seconds; else what happened."""
    if not host.docker_socket.exists():
        return f"no socket {host.docker_socket} yet"
    try:
        with client(host, timeout=limit) as c:
            c.ping()
    except (docker.errors.DockerException, OSError) as exc:  # requests' errors are OSErrors
        return f"no ping answer on {host.docker_socket}: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def answers(host: HostLayout, timeout: float = STATUS_PROBE) -> bool:
    return probe(host, timeout) is None


def healthy(host: HostLayout) -> bool:
    return procs.pid_in(host.dockerd_pidfile) is not None and answers(host)


def dockerd_argv(host: HostLayout) -> list[str]:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    return [
        "nsenter", f"--net={host.netns_path}", dockerd,
        "--data-root", str(host.data_root),
        "--exec-root", str(host.exec_root),
        "-H", f"unix://{host.docker_socket}",
        "--group", DOCKER_GROUP,  # the socket root:docker 0660: the deploy user's way in
        "--pidfile", str(host.dockerd_pidfile),
        "--config-file", str(host.daemon_json),  # not /etc/docker/daemon.json
        "--bip", host.docker_bip,
        "--insecure-registry", REGISTRY,
        "--cgroup-parent", host.cgroup_parent,
    ]


def stop(host: HostLayout) -> None:
    """Stop the host's engine and everything it started; leave its data."""
    if answers(host):
        # Killing containers first keeps dockerd's shutdown from waiting
        # out each container's stop grace period.
        try:
            with client(host, timeout=10.0) as c:
                for container in c.containers.list(all=True):
                    try:
                        container.remove(force=True)
                    except docker.errors.APIError:
                        pass
        except (docker.errors.DockerException, OSError):
            pass  # the scan below still finds whatever survives
    pid = procs.live_pid(host.dockerd_pidfile)
    if pid:
        procs.stop_pids([pid], grace=15)
    leftovers = procs.find_ours(path_marks=[str(host.root) + "/"],
                                cgroup_marks=[f"/{host.cgroup_parent}/"])
    procs.stop_pids(leftovers, grace=3)
    procs.unmount_under(host.root)
    # The exec root is runtime state only.  Left behind, its containerd.pid
    # can name a killed containerd still waiting as a zombie to be reaped,
    # which the next dockerd takes for a live one and times out on.
    shutil.rmtree(host.exec_root, ignore_errors=True)
    host.dockerd_pidfile.unlink(missing_ok=True)
    host.docker_socket.unlink(missing_ok=True)


def start(host: HostLayout) -> int:
    """Start dockerd in the background and return its pid; ``wait_ready`` waits for it."""
    host.root.mkdir(parents=True, exist_ok=True)
    host.daemon_json.write_text(json.dumps({}) + "\n")
    # A pidfile left by a dead dockerd makes the new one refuse to start.
    procs.live_pid(host.dockerd_pidfile)
    host.docker_socket.unlink(missing_ok=True)
    # nsenter execs dockerd, so this pid is dockerd's own.
    return procs.spawn_detached(dockerd_argv(host), host.dockerd_log)


def wait_ready(host: HostLayout, pid: int | None = None, *, timeout: float = START_TIMEOUT) -> None:
    """Wait for the engine to answer (failing at once if the process we
    started died); if it does not, stop it and start it once more."""
    def again() -> None:
        stop(host)
        _wait(host, start(host), timeout)

    procs.retry_once(f"dockerd for {host.name}", lambda: _wait(host, pid, timeout), again)


def _wait(host: HostLayout, pid: int | None, timeout: float) -> None:
    def gone() -> str | None:
        if pid is None or procs.alive(pid):
            return None
        return f"dockerd (pid {pid}) exited; see {host.dockerd_log}:\n{procs.tail(host.dockerd_log)}"

    procs.poll(f"dockerd for {host.name}", f"a ping answer on {host.docker_socket}",
               lambda limit: probe(host, limit), timeout=timeout, interval=0.2, gone=gone)
