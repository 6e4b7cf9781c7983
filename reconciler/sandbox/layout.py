"""Where every sandbox file lives and which addresses each host gets (pure).

Everything is under one state directory so that ``down`` can find every
daemon (their command lines name it) and every mount (they sit below it).
Paths stay short: unix socket paths must be under 108 bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import SandboxError

DEFAULT_STATE_DIR = "/var/lib/reconciler-sandbox"
STATE_DIR_ENV = "RECONCILER_SANDBOX_DIR"

NETNS_PREFIX = "rcl-"
BRIDGE = "rcl-br0"
BRIDGE_ADDRESS = "10.213.0.1"
PREFIX_LEN = 24
REGISTRY_PORT = 5000
REGISTRY = f"{BRIDGE_ADDRESS}:{REGISTRY_PORT}"
IMAGE_REPOSITORY = "demo/web"
SSH_PORT = 22
# The non-root user the product reaches hosts as: in the docker group (the
# engine's socket is root:docker 0660), nothing else.  One user for every
# sandbox host: they share the machine's /etc/passwd.
DEPLOY_USER = "rcl-deploy"
DOCKER_GROUP = "docker"
# How the product reaches the sandbox hosts: as the deploy user, the
# router's path included (the hosts' HAProxy runs as that user, its files
# are that user's: sandbox/haproxy.py).
SSH_USER = DEPLOY_USER
ROUTER_PORT = 80  # each host's HAProxy frontend, on the host's address
ROUTER_ADMIN = "127.0.0.1:9901"  # its Runtime API, on the host's own loopback (reached through SSH)
MAX_HOSTS = 50  # 10.213.0.{10+i} and 172.31.{10+i}.0/24 must stay valid
_MAX_SOCKET_PATH = 107


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR).resolve()


@dataclass(frozen=True)
class HostLayout:
    """One sandbox host: its namespace, addresses and files."""

    index: int  # 1-based
    root: Path  # <state>/hN

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}h{self.index}"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def veth(self) -> str:
        return f"{NETNS_PREFIX}h{self.index}-br"

    @property
    def address(self) -> str:
        return f"10.213.0.{10 + self.index}"

    @property
    def docker_bip(self) -> str:
        return f"172.31.{10 + self.index}.1/24"

    @property
    def cgroup_parent(self) -> str:
        return f"{NETNS_PREFIX}h{self.index}"

    data_root = property(lambda self: self.root / "docker")
    exec_root = property(lambda self: self.root / "run")
    docker_socket = property(lambda self: self.root / "docker.sock")
    dockerd_pidfile = property(lambda self: self.root / "dockerd.pid")
    dockerd_log = property(lambda self: self.root / "dockerd.log")
    daemon_json = property(lambda self: self.root / "daemon.json")
    sshd_config = property(lambda self: self.root / "sshd_config")
    sshd_host_key = property(lambda self: self.root / "ssh_host_ed25519_key")
    sshd_pidfile = property(lambda self: self.root / "sshd.pid")
    sshd_log = property(lambda self: self.root / "sshd.log")
    haproxy_dir = property(lambda self: self.root / "haproxy")
    haproxy_config = property(lambda self: self.root / "haproxy" / "haproxy.cfg")
    haproxy_state = property(lambda self: self.root / "haproxy" / "server-state")
    haproxy_socket = property(lambda self: self.root / "haproxy" / "admin.sock")
    haproxy_pidfile = property(lambda self: self.root / "haproxy" / "haproxy.pid")
    haproxy_log = property(lambda self: self.root / "haproxy" / "haproxy.log")


@dataclass(frozen=True)
class Layout:
    root: Path

    def host(self, index: int) -> HostLayout:
        if not 1 <= index <= MAX_HOSTS:
            raise SandboxError(f"hosts: index {index} out of range 1..{MAX_HOSTS}")
        return HostLayout(index, self.root / f"h{index}")

    def hosts(self, count: int) -> tuple[HostLayout, ...]:
        return tuple(self.host(i) for i in range(1, count + 1))

    description = property(lambda self: self.root / "sandbox.json")
    client_dir = property(lambda self: self.root / "client")
    identity_file = property(lambda self: self.root / "client" / "id_ed25519")
    known_hosts_file = property(lambda self: self.root / "client" / "known_hosts")
    authorized_keys = property(lambda self: self.root / "authorized_keys")
    registry_dir = property(lambda self: self.root / "registry")
    registry_config = property(lambda self: self.root / "registry" / "config.yml")
    registry_data = property(lambda self: self.root / "registry" / "data")
    registry_log = property(lambda self: self.root / "registry" / "registry.log")
    registry_pidfile = property(lambda self: self.root / "registry" / "registry.pid")

    def check_socket_paths(self, count: int) -> None:
        longest = self.host(count).exec_root / "containerd" / "containerd.sock.ttrpc"
        if len(str(longest)) > _MAX_SOCKET_PATH:
            raise SandboxError(f"state dir {self.root} is too long for unix sockets "
                               f"({longest} > {_MAX_SOCKET_PATH} bytes); set {STATE_DIR_ENV} shorter")


def layout() -> Layout:
    return Layout(state_dir())
