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

from reconciler.errors import SandboxError
from reconciler.sandbox import procs
from reconciler.sandbox.layout import REGISTRY, HostLayout

START_TIMEOUT = 45.0


@contextlib.contextmanager
def client(host: HostLayout, timeout: float = 5.0):
    """A docker-py client on the host's local socket, closed on exit."""
    c = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41", timeout=timeout)
    try:
        yield c
    finally:
        c.close()


def answers(host: HostLayout) -> bool:
    if not host.docker_socket.exists():
        return False
    try:
        with client(host, timeout=2.0) as c:
            return bool(c.ping())
    except Exception:  # any failure means "not usable", the caller restarts it
        return False


def healthy(host: HostLayout) -> bool:
    return procs.live_pid(host.dockerd_pidfile) is not None and answers(host)


def dockerd_argv(host: HostLayout) -> list[str]:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    return [
        "nsenter", f"--net={host.netns_path}", dockerd,
        "--data-root", str(host.data_root),
        "--exec-root", str(host.exec_root),
        "-H", f"unix://{host.docker_socket}",
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
        except Exception:
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


def wait_ready(host: HostLayout, pid: int | None = None) -> None:
    """Wait for the engine to answer; fail at once if the process we started died."""
    died = lambda: pid is not None and not procs.alive(pid)  # noqa: E731
    procs.wait_until(lambda: died() or answers(host), timeout=START_TIMEOUT, interval=0.2)
    if not answers(host):
        why = "exited" if died() else f"did not answer on {host.docker_socket} within {START_TIMEOUT:.0f}s"
        raise SandboxError(f"dockerd for {host.name} {why}; see {host.dockerd_log}:\n"
                           + procs.tail(host.dockerd_log))
