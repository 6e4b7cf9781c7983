"""Extra SSH endpoints for the simulated fleet: more sshd listeners, same engines.

Each sandbox host gets more sshd processes on ports 2201.. in its own network
namespace (``nsenter --net``), with the host's own host key and the same
``SetEnv DOCKER_HOST``, so every endpoint is a real SSH server doing a real
handshake, but the endpoints of one host share its dockerd.  Started and
stopped by this module only, by pid; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FIRST_PORT = 2201


@dataclass(frozen=True)
class Endpoint:
    name: str
    address: str
    port: int
    user: str = "root"


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@contextlib.contextmanager
def extra_endpoints(sb, total: int):
    """Yield (endpoints, known_hosts_lines): the sandbox hosts plus extra sshd
    listeners up to ``total`` endpoints; stop the extra ones afterwards."""
    from reconciler.sandbox.layout import layout

    lay = layout()
    work = Path(tempfile.mkdtemp(prefix="bench-sshd-"))
    endpoints = [Endpoint(h.name, h.address, h.port) for h in sb.hosts]
    lines: list[str] = []
    pidfiles: list[Path] = []
    try:
        for i in range(total - len(sb.hosts)):
            host = sb.hosts[i % len(sb.hosts)]
            hl = lay.host(int(host.name[1:]))
            port = FIRST_PORT + i
            text = hl.sshd_config.read_text()
            pidfile = work / f"sshd-{port}.pid"
            text = re.sub(r"(?m)^Port .*$", f"Port {port}", text)
            text = re.sub(r"(?m)^PidFile .*$", f"PidFile {pidfile}", text)
            config = work / f"sshd-{port}.conf"
            config.write_text(text)
            pidfiles.append(pidfile)
            subprocess.run(["nsenter", f"--net={hl.netns_path}", "/usr/sbin/sshd", "-f", str(config),
                            "-E", str(work / f"sshd-{port}.log")], check=True)
            keytype, key = Path(str(hl.sshd_host_key) + ".pub").read_text().split()[:2]
            lines.append(f"[{host.address}]:{port} {keytype} {key}")
            endpoints.append(Endpoint(f"x{len(endpoints) + 1}", host.address, port))
        deadline = time.monotonic() + 15
        for e in endpoints[len(sb.hosts):]:
            while not _port_open(e.address, e.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"extra sshd {e.address}:{e.port} did not answer; see {work}")
                time.sleep(0.05)
        yield endpoints, lines
    finally:
        for pidfile in pidfiles:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        subprocess.run(["rm", "-rf", str(work)], check=False)
