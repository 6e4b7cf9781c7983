"""The sandbox registry: Debian's docker-registry, no auth, on the bridge address.

The packaged config demands htpasswd auth, so we write our own.  It listens
on 10.213.0.1:5000 only, reachable from every host's engine (which trusts it
with ``--insecure-registry``) and from nowhere beyond this machine.
"""

from __future__ import annotations

import http.client
import shutil
import urllib.error
import urllib.request

from reconciler.sandbox import procs
from reconciler.sandbox.layout import REGISTRY, Layout

START_TIMEOUT = 60.0  # it starts in well under a second idle; not on two loaded cores
STATUS_PROBE = 5.0


def config_text(layout: Layout) -> str:
    return "\n".join([
        "# Written by `reconciler sandbox up`.",
        "version: 0.1",
        "log:",
        "  level: info",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {layout.registry_data}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {REGISTRY}",
        "",
    ])


def probe(limit: float) -> str | None:
    """None when the registry answers ``GET /v2/`` with 200 within ``limit`` seconds."""
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=limit) as resp:
            return None if resp.status == 200 else f"http://{REGISTRY}/v2/ answered {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"http://{REGISTRY}/v2/ answered {exc.code}"
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        return f"http://{REGISTRY}/v2/: {getattr(exc, 'reason', exc)}"


def answers(timeout: float = STATUS_PROBE) -> bool:
    return probe(timeout) is None


def healthy(layout: Layout) -> bool:
    return procs.pid_in(layout.registry_pidfile) is not None and answers()


def stop(layout: Layout) -> None:
    pid = procs.live_pid(layout.registry_pidfile)
    pids = {pid} if pid else set()
    pids |= set(procs.find_ours(path_marks=[str(layout.registry_config)]))
    procs.stop_pids(pids, grace=5)
    layout.registry_pidfile.unlink(missing_ok=True)


def start(layout: Layout) -> None:
    """Start the registry unless a healthy one of ours runs; ``wait_ready`` waits."""
    text = config_text(layout)
    if healthy(layout) and layout.registry_config.exists() and layout.registry_config.read_text() == text:
        return
    stop(layout)
    layout.registry_data.mkdir(parents=True, exist_ok=True)
    layout.registry_config.write_text(text)
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    pid = procs.spawn_detached([binary, "serve", str(layout.registry_config)], layout.registry_log)
    layout.registry_pidfile.write_text(f"{pid}\n")


def wait_ready(layout: Layout, *, timeout: float = START_TIMEOUT) -> None:
    """Wait for the registry started by ``start``; if it does not answer, restart it once."""
    def again() -> None:
        stop(layout)
        start(layout)
        _wait(layout, timeout)

    procs.retry_once("registry", lambda: _wait(layout, timeout), again)


def _wait(layout: Layout, timeout: float) -> None:
    def gone() -> str | None:
        pid = procs.read_pidfile(layout.registry_pidfile)
        if pid is None or procs.alive(pid):
            return None
        return f"docker-registry (pid {pid}) exited; see {layout.registry_log}:\n{procs.tail(layout.registry_log)}"

    procs.poll("registry", f"200 from http://{REGISTRY}/v2/", probe, timeout=timeout, interval=0.1, gone=gone)
