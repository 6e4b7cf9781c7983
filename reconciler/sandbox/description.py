"""What ``sandbox up`` brought up, as frozen data and as the JSON it writes.

``<state>/sandbox.json`` is the contract with tests, the demo and users:
``load()`` reads it back into the same dataclasses ``up`` returns.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from reconciler.errors import SandboxError


@dataclass(frozen=True)
class SandboxRouter:
    """The host's HAProxy: HTTP on ``address:port``, its Runtime API on ``admin`` inside the host."""

    address: str
    port: int
    admin: str  # 127.0.0.1:PORT in the host's namespace: reach it through the host's SSH connection
    config_file: str
    state_file: str
    socket: str  # the unix admin socket, the deploy user's (for local debugging and reloads)
    pidfile: str
    log: str
    reload_command: str  # run on the host: the master process re-reads the config

    def settings(self):
        """The ``reconciler.core.router.RouterSettings`` its config is rendered with."""
        from reconciler.core.router import RouterSettings
        from reconciler.core.traffic import files_dir

        return RouterSettings(bind=f"{self.address}:{self.port}", admin=self.admin, socket=self.socket,
                              state_file=self.state_file, log=self.log, files=files_dir(self.config_file))


@dataclass(frozen=True)
class SandboxHost:
    name: str  # h1, h2, ...
    address: str
    port: int
    user: str
    identity_file: str
    known_hosts_file: str
    docker_socket: str  # for local debugging only: the product goes through SSH
    netns: str
    router: SandboxRouter | None = None  # None in a description written before hosts had one

    def ssh_access(self, timeout: float = 10.0):
        """The ``reconciler.adapters.ssh.SSHAccess`` that reaches this host."""
        from reconciler.adapters.ssh import SSHAccess  # imported late: keeps ``load`` free of paramiko

        return SSHAccess(host=self.name, address=self.address, port=self.port, user=self.user,
                         identity_file=self.identity_file, known_hosts_file=self.known_hosts_file,
                         timeout=timeout)

    def router_access(self, timeout: float = 10.0):
        """The ``reconciler.adapters.router.RouterAccess`` for this host's HAProxy."""
        from reconciler.adapters.router import RouterAccess  # late, like ssh_access

        if self.router is None:
            raise SandboxError(f"{self.name} has no router in the sandbox description; run `reconciler sandbox up`")
        return RouterAccess(host=self.name, config_file=self.router.config_file,
                            reload_command=self.router.reload_command, timeout=timeout)


@dataclass(frozen=True)
class Sandbox:
    state_dir: str
    hosts: tuple[SandboxHost, ...]
    registry: str  # host:port, plain HTTP
    image_repository: str  # registry/repo, e.g. 10.213.0.1:5000/demo/web
    images: Mapping[str, str]  # variant tag -> "repo:tag@sha256:..."
    database_dsn: str | None
    identity_file: str
    known_hosts_file: str
    elapsed_seconds: float

    def host(self, name: str) -> SandboxHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def to_json(self) -> dict:
        # asdict would deep-copy the read-only images mapping, which cannot be copied.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["hosts"] = [asdict(h) for h in self.hosts]
        data["images"] = dict(self.images)
        return data


def from_json(data: dict) -> Sandbox:
    try:
        hosts = tuple(SandboxHost(**{**h, "router": SandboxRouter(**h["router"]) if h.get("router") else None})
                      for h in data["hosts"])
        rest = {k: v for k, v in data.items() if k not in ("hosts", "images")}
        return Sandbox(hosts=hosts, images=MappingProxyType(dict(data["images"])), **rest)
    except (KeyError, TypeError) as exc:
        raise SandboxError(f"sandbox description is malformed ({exc}); run `reconciler sandbox up`") from None


def write(sandbox: Sandbox, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sandbox.to_json(), indent=2) + "\n")
    tmp.replace(path)


def load(path: Path | None = None) -> Sandbox:
    """The sandbox as last brought up (``<state>/sandbox.json``)."""
    if path is None:
        from reconciler.sandbox.layout import layout

        path = layout().description
    try:
        return from_json(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise SandboxError(f"no sandbox description at {path}; run `reconciler sandbox up`") from None
