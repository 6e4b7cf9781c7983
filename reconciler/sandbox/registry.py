"""The sandbox registry: Debian's docker-registry, no auth, on the bridge address.

The packaged config demands htpasswd auth, so we write our own.  It listens
on 10.213.0.1:5000 only, reachable from every host's engine (which trusts it
with ``--insecure-registry``) and from nowhere beyond this machine.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request

from reconciler.errors import SandboxError
from reconciler.sandbox import procs
from reconciler.sandbox.layout import REGISTRY, Layout

START_TIMEOUT = 15.0


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


def answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def healthy(layout: Layout) -> bool:
    return procs.live_pid(layout.registry_pidfile) is not None and answers()


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


def wait_ready(layout: Layout) -> None:
    if not procs.wait_until(answers, timeout=START_TIMEOUT, interval=0.1):
        raise SandboxError(f"registry did not answer http://{REGISTRY}/v2/ within "
                           f"{START_TIMEOUT:.0f}s; see {layout.registry_log}:\n" + procs.tail(layout.registry_log))
