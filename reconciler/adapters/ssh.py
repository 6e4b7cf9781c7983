"""The one place SSH connections are built.

Every connection reconciler opens goes through ``connect``: the host key must
match the key pinned in the environment's ``known_hosts`` file, an unknown
key is refused (paramiko's ``RejectPolicy``; fabric's default policy would
trust whoever answers and remember its key), nothing is read from the
user's ``~/.ssh`` (no system known_hosts, no agent, no ssh config), and
every phase has a timeout.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection

from reconciler.errors import HostKeyMismatch, HostUnreachable, UnknownHostKey

# Seconds between keepalives on an open connection: an agent keeps one
# connection per host for a whole run, and a silent NAT must not drop it.
KEEPALIVE_INTERVAL = 15


@dataclass(frozen=True)
class SSHAccess:
    """Everything needed to reach one host, and nothing from the environment."""

    host: str  # the host's name in the desired state, used in every error
    address: str
    port: int
    user: str
    identity_file: str
    known_hosts_file: str
    timeout: float = 10.0


def _host_key_name(access: SSHAccess) -> str:
    # known_hosts writes non-default ports as [addr]:port.
    return access.address if access.port == 22 else f"[{access.address}]:{access.port}"


def connect(access: SSHAccess) -> Connection:
    """Open an SSH connection to ``access`` with its pinned host key.

    Raises ``UnknownHostKey`` when no key is pinned for the host,
    ``HostKeyMismatch`` when the host presents another key, and
    ``HostUnreachable`` on network failures and timeouts.  The returned
    connection is open; close it with ``.close()``.
    """
    known_hosts = Path(access.known_hosts_file)
    pinned = paramiko.HostKeys()
    try:
        pinned.load(str(known_hosts))
    except FileNotFoundError:
        raise UnknownHostKey(
            f"known_hosts file {known_hosts} does not exist; pin the host's key there",
            host=access.host,
        ) from None
    if pinned.lookup(_host_key_name(access)) is None:
        raise UnknownHostKey(
            f"no key pinned for {_host_key_name(access)} in {known_hosts}; "
            "add the host's key (ssh-keyscan, verified out of band)",
            host=access.host,
        )

    config = Config(overrides={"load_ssh_configs": False, "run": {"hide": True, "warn": True}})
    conn = Connection(
        host=access.address,
        user=access.user,
        port=access.port,
        config=config,
        connect_timeout=access.timeout,
        connect_kwargs={
            "key_filename": [access.identity_file],
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": access.timeout,
            "auth_timeout": access.timeout,
            "channel_timeout": access.timeout,
        },
    )
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    # Load the pins directly: load_host_keys would remember the file name and
    # could write to it; we never want to change the pinned file.
    for hostname, keys in pinned.items():
        for keytype, key in keys.items():
            conn.client.get_host_keys().add(hostname, keytype, key)
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise HostKeyMismatch(
            f"host key mismatch at {_host_key_name(access)}: the host presented "
            f"{exc.key.get_name()} {exc.key.get_fingerprint().hex()} but "
            f"{known_hosts} pins {exc.expected_key.get_fingerprint().hex()}; "
            "refusing to connect (the host was reinstalled, or someone is in the middle)",
            host=access.host,
        ) from None
    except paramiko.AuthenticationException as exc:
        raise HostUnreachable(
            f"SSH authentication as {access.user} with {access.identity_file} failed: {exc}",
            host=access.host,
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise UnknownHostKey(
                f"the host's key type is not pinned in {known_hosts}: {exc}", host=access.host
            ) from None
        raise HostUnreachable(f"SSH to {access.address}:{access.port} failed: {exc}", host=access.host) from None
    except (OSError, socket.timeout, EOFError) as exc:
        raise HostUnreachable(
            f"cannot reach {access.address}:{access.port} over SSH: {exc or type(exc).__name__}",
            host=access.host,
        ) from None
    conn.transport.set_keepalive(KEEPALIVE_INTERVAL)
    return conn
