"""The one place SSH connections are built, and channels opened on them.

Every connection reconciler opens goes through ``connect``: the host key must
match the key pinned in the environment's ``known_hosts`` file, an unknown
key is refused (paramiko's ``RejectPolicy``, never ``AutoAddPolicy``, which
would trust whoever answers and remember its key), nothing is read from the
user's ``~/.ssh`` (no system known_hosts, no agent, no ssh config), and
every phase has a timeout.

Every channel goes through ``open_channel`` (or ``open_streamlocal``, a
channel straight to a Unix socket on the host), which tells a refusal by the
host (the caller decides what it means) from a connection that died under
it: a dead transport re-raises whatever its thread died of (an EOFError, a
reset, even an AttributeError), and all of those are ``HostUnreachable``.
A connection's log records go to ``paramiko.transport.<host>``, so that
``adapters.liblog`` can say which host a record is about.

A connection is fabric's ``Connection``, built so that none of fabric's
defaults that would trust or read more than the above apply: no config
files (``lazy``), an empty ssh config, paramiko's ``RejectPolicy`` in place
of fabric's ``AutoAddPolicy``, our own TCP socket.  Commands run on a host
go through ``run`` (fabric's ``Connection.run``, output hidden and
captured, no stdin, a timeout), except a command fed data on its stdin
(``feed``: invoke feeds a stream at 100 bytes a second); channels fabric
has no API for (a Unix socket, HAProxy's admin port) are opened on
``conn.transport``.

fabric (with invoke, unittest.mock and asyncio) is 35-50 ms of imports:
``connect`` imports it after its TCP connect, in the threads
``fleet.start_opening`` opens the hosts in, never on the main thread's way
to ``--help`` or the planner.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

if TYPE_CHECKING:
    from fabric import Connection

from reconciler.errors import HostKeyMismatch, HostUnreachable, UnknownHostKey

# Seconds between keepalives on an open connection: an agent keeps one
# connection per host for a whole run, and a silent NAT must not drop it.
KEEPALIVE_INTERVAL = 15
LOG_CHANNEL = "paramiko.transport"

# What paramiko raises when a connection or channel fails under a request.
SSH_FAILURES = (paramiko.SSHException, EOFError, OSError)

# How every command runs on a host (invoke's ``Runner.run`` options, as
# fabric's Connection.run takes them): its output captured, never echoed;
# a non-zero exit is an answer for the caller, not an exception; no stdin
# (invoke would mirror ours, and feeds a stream one byte per 10 ms, its
# issue 774); and latin-1, which maps each byte to one character: invoke
# decodes every 1000-byte chunk on its own with errors="replace", which
# would mangle a UTF-8 character cut between two chunks, and any binary.
# The text encodes back to exactly the bytes the host sent (``run``).
BYTES = "latin-1"
RUN_OPTIONS = {"hide": True, "warn": True, "in_stream": False, "pty": False, "encoding": BYTES}

# OpenSSH's channel to a Unix socket on the server (its PROTOCOL file, 2.4;
# `ssh -L local:/remote.sock`), allowed unless AllowStreamLocalForwarding no.
STREAMLOCAL = "direct-streamlocal@openssh.com"


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


def connect(access: SSHAccess) -> "Connection":
    """Open an SSH connection to ``access`` with its pinned host key.

    Raises ``UnknownHostKey`` when no key is pinned for the host,
    ``HostKeyMismatch`` when the host presents another key, and
    ``HostUnreachable`` on network failures and timeouts.  The returned
    connection is fabric's ``Connection``, open; close it with ``.close()``.
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

    # Our own TCP socket, so TCP_NODELAY holds from the first packet: the
    # handshake is a dozen small packets each waiting for an answer, and
    # with Nagle on it took 63-107 ms on the sandbox, 20-29 ms without.
    try:
        sock = socket.create_connection((access.address, access.port), timeout=access.timeout)
    except OSError as exc:  # socket.timeout included
        raise HostUnreachable(
            f"cannot reach {access.address}:{access.port} over SSH: {exc or type(exc).__name__}",
            host=access.host,
        ) from None
    _no_small_packet_delays(sock)
    try:
        conn = _connection(access, sock, pinned)
    except BaseException:
        sock.close()
        raise
    try:
        try:
            conn.open()
        except BaseException:
            conn.client.close()  # fabric's close() closes only a connection that is up
            sock.close()  # paramiko leaves a socket it was given open
            raise
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
    conn.transport.set_log_channel(f"{LOG_CHANNEL}.{access.host}")
    return conn


def _connection(access: SSHAccess, sock: socket.socket, pinned: paramiko.HostKeys) -> "Connection":
    """fabric's ``Connection`` to ``access`` over ``sock``, not open yet,
    trusting only ``pinned`` and reading nothing of the user's or the system's."""
    from fabric import Config, Connection  # imported beside the handshakes: fleet.start_opening

    config = Config(
        lazy=True,  # no /etc/fabric.yaml, ~/.fabric.yaml, project or environment config
        ssh_config=paramiko.SSHConfig(),  # an explicit empty one: ~/.ssh/config and /etc/ssh are not read
        overrides={"load_ssh_configs": False, "forward_agent": False, "run": dict(RUN_OPTIONS)},
    )
    conn = Connection(
        access.address,
        user=access.user,
        port=access.port,
        config=config,
        forward_agent=False,
        connect_kwargs={
            "key_filename": [access.identity_file],
            "look_for_keys": False,  # no ~/.ssh/id_*
            "allow_agent": False,
            # fabric's connect_timeout is cut to whole seconds (int()); paramiko's own is exact
            "timeout": access.timeout,
            "banner_timeout": access.timeout,
            "auth_timeout": access.timeout,
            "channel_timeout": access.timeout,  # also every channel fabric opens (Connection.run's session)
            "sock": sock,
        },
    )
    # fabric's default would trust whoever answers and remember its key.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    # The pins loaded directly: load_host_keys would remember the file name
    # and could write to it; we never want to change the pinned file.
    for hostname, keys in pinned.items():
        for keytype, key in keys.items():
            conn.client.get_host_keys().add(hostname, keytype, key)
    return conn


def identity_file(conn: Any) -> str | None:
    """The identity ``conn`` logged in with (it keys host-file secrets' digests)."""
    files = (getattr(conn, "connect_kwargs", None) or {}).get("key_filename") or []
    return files[0] if files else None


def _no_small_packet_delays(sock: Any) -> None:
    """Every request here is a few small packets waiting for an answer, the
    case where Nagle's algorithm and delayed ACKs wait for each other: a
    channel opened after another request waited 40 ms for the ACK of our
    previous packet.  TCP_NODELAY ends that (measured on the sandbox: 42 ms
    -> 1 ms per channel open)."""
    if not isinstance(sock, socket.socket):
        return  # a proxy or a test's socket pair: nothing to tune
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP: nothing to tune


def _ack_at_once(sock: Any) -> None:
    """Acknowledge what arrives next without the 40 ms delay.  Right after
    the login, OpenSSH sends a message that needs no answer (its host keys);
    when that crosses our first channel-open, sshd holds its confirmation
    (Nagle) until we ACK it, and Linux delays that ACK by 40 ms.  Set after
    our send (the flag does not last), TCP_QUICKACK sends the ACK at once:
    measured on the sandbox, the first engine channel 45 ms -> 2 ms."""
    if isinstance(sock, socket.socket) and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass  # not TCP: nothing to tune


def alive(transport: Any) -> bool:
    return transport is not None and transport.is_active()


def innermost(exc: BaseException) -> str:
    """The reason under the wrappers requests and urllib3 put around a lost
    connection (``('Connection aborted.', OSError('Socket is closed'))``)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = next((a for a in exc.args if isinstance(a, BaseException)), None)
        if inner is None and isinstance(getattr(exc, "reason", None), BaseException):
            inner = exc.reason
        if inner is None:
            break
        exc = inner
    return str(exc) or type(exc).__name__


def open_channel(transport: Any, kind: str = "session", dest_addr=None, src_addr=None, *,
                 host: str, what: str, timeout: float) -> paramiko.Channel:
    """A new channel on ``transport``, or ``HostUnreachable`` naming ``what``
    if the connection is gone.  A live connection's refusal (a
    ``ChannelException``, a timeout) is raised as it is."""
    if not alive(transport):
        raise HostUnreachable(f"{what}: the SSH connection is closed", host=host)
    try:
        return transport.open_channel(kind, dest_addr, src_addr, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - re-raised below unless the connection died
        if alive(transport):
            raise
        # The transport's thread died; open_channel re-raised what it died
        # of, whatever its type: that is a lost connection, not a bug here.
        raise HostUnreachable(f"{what}: SSH connection lost: {innermost(exc)}", host=host) from None


def open_streamlocal(transport: Any, socket_path: str, *, host: str, what: str, timeout: float) -> paramiko.Channel:
    """A ``direct-streamlocal@openssh.com`` channel to ``socket_path`` on the
    host: bytes written to it reach the socket as if from a local client,
    with no process started on the host.

    paramiko opens only the channel kinds it knows (its issue 544, open
    since 2015), so this is its ``Transport.open_channel`` with the request
    this kind carries (socket path, then two reserved fields), built with
    the transport's own channel table, window sizes and open-reply handling.
    As for ``open_channel``: the host's refusal is paramiko's
    ``ChannelException`` (``code`` 1: forwarding not allowed, 2: connecting
    to the socket failed), a lost connection ``HostUnreachable``.
    """
    if not alive(transport):
        raise HostUnreachable(f"{what}: the SSH connection is closed", host=host)
    with transport.lock:
        window_size = transport._sanitize_window_size(None)
        max_packet_size = transport._sanitize_packet_size(None)
        chanid = transport._next_channel()
        m = paramiko.Message()
        m.add_byte(paramiko.common.cMSG_CHANNEL_OPEN)
        m.add_string(STREAMLOCAL)
        m.add_int(chanid)
        m.add_int(window_size)
        m.add_int(max_packet_size)
        m.add_string(socket_path)
        m.add_string("")  # reserved (OpenSSH reads, and ignores, an originator address and port)
        m.add_int(0)
        channel = paramiko.Channel(chanid)
        transport._channels.put(chanid, channel)
        transport.channel_events[chanid] = opened = threading.Event()
        transport.channels_seen[chanid] = True
        channel._set_transport(transport)
        channel._set_window(window_size, max_packet_size)
    try:
        transport._send_user_message(m)
        _ack_at_once(transport.sock)
        deadline = time.monotonic() + timeout
        while not opened.wait(0.1):
            if not transport.is_active():
                break
            if time.monotonic() > deadline:
                transport._channels.delete(chanid)
                transport.channel_events.pop(chanid, None)
                raise paramiko.SSHException(f"Timeout opening channel to {socket_path}.")
    except Exception as exc:  # noqa: BLE001 - re-raised below unless the connection died
        if alive(transport):
            raise
        raise HostUnreachable(f"{what}: SSH connection lost: {innermost(exc)}", host=host) from None
    if not transport.is_active():
        raise HostUnreachable(f"{what}: SSH connection lost: "
                              f"{innermost(transport.get_exception() or EOFError('closed'))}", host=host)
    if transport._channels.get(chanid) is not None:
        return channel
    # Refused: paramiko's open-failure handler dropped the channel and left
    # the reason as the transport's saved exception, as for open_channel.
    # That is one slot per transport: of two refusals at once (two threads
    # on one connection), one thread may find it emptied by the other; the
    # channel was refused all the same (tests/test_driver_threads.py).
    raise transport.get_exception() or paramiko.ChannelException(
        paramiko.OPEN_FAILED_CONNECT_FAILED, "refused (the host's reason went to a channel opened at the same time)")


def run(conn: "Connection", command: str, *, host: str, what: str, timeout: float) -> tuple[int, bytes, bytes]:
    """Run ``command`` on the host through its shell (fabric's
    ``Connection.run``); its exit status, stdout and stderr (bytes, exactly
    as sent).

    A connection that is closed or lost, before or during the command, and
    a command that does not finish within ``timeout`` seconds (its channel
    is then closed) are ``HostUnreachable`` naming ``what``.
    """
    from invoke.exceptions import CommandTimedOut, ThreadException

    if not alive(conn.transport):
        raise HostUnreachable(f"{what}: the SSH connection is closed", host=host)
    try:
        result = conn.run(command, timeout=timeout, **RUN_OPTIONS)
    except CommandTimedOut:
        raise HostUnreachable(f"{what}: `{command}` did not finish within {timeout:g}s", host=host) from None
    except ThreadException as exc:  # an I/O thread's failure: the channel or the connection went
        reasons = "; ".join(innermost(e.value) for e in exc.exceptions)
        raise HostUnreachable(f"{what}: SSH connection lost: {reasons}", host=host) from None
    except SSH_FAILURES as exc:  # opening the session
        if alive(conn.transport) and isinstance(exc, paramiko.ChannelException):
            raise HostUnreachable(f"{what}: the host refused a session: {innermost(exc)}", host=host) from None
        raise HostUnreachable(f"{what}: SSH connection lost: {innermost(exc)}", host=host) from None
    if result.exited == -1:  # paramiko's word for "the channel closed without an exit status"
        raise HostUnreachable(f"{what}: the SSH channel closed before `{command}` finished", host=host)
    return result.exited, result.stdout.encode(BYTES), result.stderr.encode(BYTES)


def feed(transport: Any, command: str, data: bytes, *, host: str, what: str,
         timeout: float) -> tuple[int, bytes]:
    """Run ``command`` with ``data`` on its standard input; its exit status
    and output (stdout and stderr together).

    For what writes a file on the host from our memory (a secret's value,
    which must never be in an argv; a router's config).  Not fabric's
    ``Connection.run``: invoke feeds ``in_stream`` one byte per 10 ms
    (``bytes_to_read`` is 1 for anything not a terminal, then
    ``input_sleep``; invoke issue 774, open), 100 bytes a second, and SFTP
    is not on every host.  SSH failures are ``HostUnreachable``.
    """
    channel = open_channel(transport, host=host, what=what, timeout=timeout)
    try:
        channel.set_combine_stderr(True)
        channel.settimeout(timeout)
        channel.exec_command(command)
        channel.sendall(data)
        channel.shutdown_write()
        _ack_at_once(transport.sock)
        out = []
        while chunk := channel.recv(65536):
            out.append(chunk)
        code = channel.recv_exit_status()
    except SSH_FAILURES as exc:  # socket.timeout included
        raise HostUnreachable(f"{what}: {innermost(exc)}", host=host) from None
    finally:
        channel.close()
    if code == -1:
        raise HostUnreachable(f"{what}: the SSH channel closed before `{command}` finished", host=host)
    return code, b"".join(out)


def open_sftp(transport: Any, *, host: str, what: str, timeout: float) -> paramiko.SFTPClient | None:
    """An SFTP session on a new channel, or None when the host's sshd offers
    no SFTP subsystem (some hardened hosts leave it out)."""
    channel = open_channel(transport, host=host, what=what, timeout=timeout)
    try:
        channel.settimeout(timeout)
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)
    except SSH_FAILURES as exc:
        channel.close()
        if not alive(transport):
            raise HostUnreachable(f"{what}: SSH connection lost: {innermost(exc)}", host=host) from None
        # sshd answers an unknown subsystem by closing the channel, and
        # paramiko reports that as "Channel closed."; the connection is fine.
        return None
