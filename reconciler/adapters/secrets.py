"""Encrypted secrets: age decryption in the agent's memory, the keyed hash
that puts a secret's value into the config hash, and delivery to a container.

Values in the repository are armored age ciphertexts (``age -a``) to the
environment's recipients (``environments/<env>/age-recipients``, one
``age1...`` per line, the file ``age -R`` reads).  The private key is an
age identity file on the agent's machine only (``$RECONCILER_AGE_KEY`` or
``use_identity_file``), never in the repository.  pyrage (the rust age
crate) does the cryptography in this process: no plaintext ever crosses a
pipe or an argv.

Delivery ``as: file``: the values are written over SSH (on stdin of an exec
channel) to a fresh directory on a tmpfs of the host (``/dev/shm``, inside a
directory only the deploy user can enter), bind-mounted read-only at
``/run/secrets``.  Not the Engine API's ``put_archive`` into a tmpfs mount:
the engine (20.10 measured) extracts into the container's overlay layer
under the mount point, so the value lands on the host's disk and the
container sees an empty tmpfs.  The directory lives as long as the
container (``discard`` when it is removed), so a restart, or a rollback to a
retained container, still finds its files; a host reboot empties it and the
container fails to start until the next deploy writes it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from reconciler.core.model import SECRETS_DIR, Environment, SecretRef, Service
from reconciler.errors import InvalidDesiredState, SecretUnreadable

if TYPE_CHECKING:  # the host driver imports this module
    from reconciler.adapters.hosts import DockerHost

AGE_KEY_ENV = "RECONCILER_AGE_KEY"
RECIPIENTS_FILE = "age-recipients"  # environments/<env>/age-recipients
DIGEST_PREFIX = "hmac-sha256:"
# Where a host keeps file-delivered secrets: a tmpfs every Linux host has,
# in a directory of the deploy user's own (checked: owner and mode 0700).
HOST_TMPFS = "/dev/shm"
_HKDF_INFO = b"reconciler secret digest v1"

_configured: str | None = None
_cache: dict[tuple, tuple] = {}


# ------------------------------------------------------------------ identity


def use_identity_file(path: str | os.PathLike[str] | None) -> None:
    """The agent's age identity file (an agent option); None: ``$RECONCILER_AGE_KEY``."""
    global _configured
    _configured = str(path) if path else None


def forget_identities() -> None:
    """Drop the configured path and what was read (tests)."""
    use_identity_file(None)
    _cache.clear()


def identity_path() -> str | None:
    return _configured or os.environ.get(AGE_KEY_ENV) or None


def identities() -> tuple:
    """The agent's age identities, read again whenever the file changes."""
    path = identity_path()
    if not path:
        raise SecretUnreadable(f"no age identity to decrypt secrets with: set ${AGE_KEY_ENV} to the agent's "
                               "age key file (age-keygen -o FILE), or pass the agent's --age-key")
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SecretUnreadable(f"age identity {path}: {exc.strerror}") from None
    key = (path, info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode)
    if key not in _cache:
        _cache.clear()
        _cache[key] = load_identities(path, info)
    return _cache[key]


def load_identities(path: str, info: os.stat_result | None = None) -> tuple:
    """Every ``AGE-SECRET-KEY-1...`` line of an age identity file (comments skipped).

    Refused when others may read it, as ssh refuses a private key: a
    key readable by anyone on the machine is no secret."""
    from pyrage import IdentityError, x25519

    info = info or os.stat(path)
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise SecretUnreadable(f"age identity {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it; chmod 600 {path}")
    found = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(x25519.Identity.from_str(line))
        except IdentityError as exc:  # the message names no part of the key
            raise SecretUnreadable(f"age identity {path}:{number}: not an age X25519 identity ({exc})") from None
    if not found:
        raise SecretUnreadable(f"age identity {path}: no AGE-SECRET-KEY-1... line")
    return tuple(found)


def _digest_key(identity) -> bytes:
    """A MAC key derived from the identity (HKDF-SHA256): the digest reveals
    nothing to whoever sees a label, and no two agents' digests compare."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(str(identity).encode())


def digest(name: str, value: bytes, identity) -> str:
    """The keyed hash of a secret's value that goes into the config hash."""
    mac = hmac.new(_digest_key(identity), name.encode() + b"\0" + value, hashlib.sha256)
    return DIGEST_PREFIX + mac.hexdigest()[:32]


# ------------------------------------------------------------------ encrypt, decrypt


def parse_recipients(text: str, where: str) -> list[str]:
    """The ``age1...`` lines of a recipients file (comments and blanks skipped)."""
    from pyrage import RecipientError, x25519

    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            x25519.Recipient.from_str(line)
        except RecipientError as exc:
            raise InvalidDesiredState([f"{where}:{number}:1: not an age X25519 recipient ({exc}); "
                                       "write the agent's public key there (age-keygen -y KEYFILE)"]) from None
        found.append(line)
    if not found:
        raise InvalidDesiredState([f"{where}:1:1: no recipient; write the agent's public key there (age-keygen -y KEYFILE)"])
    return found


def encrypt(plaintext: bytes, recipients: Iterable[str]) -> str:
    """An armored age ciphertext of ``plaintext`` to every recipient."""
    import pyrage
    from pyrage import x25519

    return pyrage.encrypt(plaintext, [x25519.Recipient.from_str(r) for r in recipients], armored=True).decode()


def decrypt(secret: SecretRef, where: str) -> tuple[bytes, object]:
    """The value of an encrypted secret and the identity that opened it.

    ``where`` names the service (``env/service``) for the error, which
    never quotes the ciphertext or any part of a key."""
    import pyrage

    keys = identities()
    for identity in keys:  # one at a time: the digest is keyed by the one that opens it
        try:
            return pyrage.decrypt(secret.encrypted.encode(), [identity]), identity
        except pyrage.DecryptError as exc:
            reason = str(exc)
            if "No matching keys" not in reason:
                break
    else:
        reason = "it is encrypted to none of the agent's keys"
    raise SecretUnreadable(f"{where}: secret {secret.name!r} cannot be decrypted with the age identity "
                           f"{identity_path()} ({reason}); encrypt it again to the environment's age-recipients "
                           f"(`reconciler secret set`)")


def resolve(environment: Environment) -> Environment:
    """The environment with each encrypted secret's keyed digest filled in,
    so the config hash follows the value (and a rotation redeploys); an
    undecryptable secret is refused here, before any host is touched."""
    services = []
    for service in environment.services:
        refs = []
        for secret in service.secrets:
            if secret.encrypted is not None:
                value, identity = decrypt(secret, f"{environment.name}/{service.name}")
                secret = dataclasses.replace(secret, digest=digest(secret.name, value, identity))
            refs.append(secret)
        services.append(dataclasses.replace(service, secrets=tuple(refs)))
    return dataclasses.replace(environment, services=tuple(services))


# ------------------------------------------------------------------ delivery


@dataclass
class Delivery:
    """What a container gets of its secrets: variables, and the host directory
    bind-mounted at /run/secrets (None when no secret is a file)."""

    env: dict[str, str] = field(default_factory=dict)
    directory: str | None = None

    def __repr__(self) -> str:  # never the values, whoever prints it
        return f"Delivery(env={sorted(self.env)}, directory={self.directory!r})"

    def mounts(self) -> list:
        if self.directory is None:
            return []
        from docker.types import Mount

        return [Mount(SECRETS_DIR, self.directory, type="bind", read_only=True)]


def value_of(secret: SecretRef, read_host_file: Callable[[str], str], where: str) -> bytes:
    """A secret's value, in memory: decrypted, or read from the host's file."""
    if secret.encrypted is not None:
        return decrypt(secret, where)[0]
    return read_host_file(secret.file).encode()


def env_values(service: Service, read_host_file: Callable[[str], str], where: str) -> dict[str, str]:
    """The variables the env-delivered secrets of ``service`` set (for a
    one-off container of the service, e.g. its migration command, too)."""
    values = {}
    for secret in service.secrets:
        if secret.delivery == "env":
            try:
                values[secret.env] = value_of(secret, read_host_file, where).decode()
            except UnicodeDecodeError:
                raise SecretUnreadable(f"{where}: secret {secret.name!r} is not UTF-8 text, which a variable "
                                       "must be; deliver it as: file") from None
    return values


def deliver(host: "DockerHost", service: Service, where: str) -> Delivery:
    """Decrypt (or read on the host) every secret of ``service``; env ones
    become variables, file ones files in a new tmpfs directory on the host."""
    delivery = Delivery(env=env_values(service, host.read_secret_file, where))
    files = {s.name: value_of(s, host.read_secret_file, where) for s in service.secrets if s.delivery == "file"}
    delivery.env.update({s.env: s.path for s in service.secrets if s.delivery == "file" and s.env})
    if files:
        delivery.directory = write_files(host, files)
    return delivery


def _base(host: "DockerHost") -> str:
    return f"{HOST_TMPFS}/reconciler-secrets.{host.conn.user}"


def _run(host: "DockerHost", command: str, stdin: bytes | None, what: str) -> None:
    """``command`` through the host's shell, ``stdin`` (None: no input) on
    its standard input (the only way a value travels: never in an argv).
    An empty ``stdin`` is still fed, so a ``cat >`` gets its end of file
    (``Connection.run`` never closes the remote's standard input)."""
    from reconciler.adapters import ssh

    def run() -> tuple[int, bytes]:
        if stdin is not None:
            return ssh.feed(host.transport, command, stdin, host=host.name, what=what, timeout=host.timeout)
        status, out, err = ssh.run(host.conn, command, host=host.name, what=what, timeout=host.timeout)
        return status, out + err

    status, err = host.over_ssh(what, run)
    if status != 0:
        said = err.decode("utf-8", "replace").strip()[-300:] or f"exit {status}"
        raise SecretUnreadable(f"{what}: {said}", host=host.name)


def write_files(host: "DockerHost", files: dict[str, bytes]) -> str:
    """A new directory on the host's tmpfs holding ``files`` (mode 0444:
    any user of the container reads them; the host's other users cannot
    enter the 0700 directory above); its path."""
    base = _base(host)
    directory = f"{base}/{os.urandom(16).hex()}"  # a fresh name, as uuid4's
    b, d = shlex.quote(base), shlex.quote(directory)
    # /dev/shm is writable by everyone: a directory someone else made there
    # first, or one others can enter, is refused rather than used.
    _run(host, f"umask 077; mkdir -p {b} && "
               f"{{ [ \"$(stat -f -c %T {b})\" = tmpfs ] || {{ echo '{base} is not on a tmpfs' >&2; exit 3; }}; }} && "
               f"{{ [ -O {b} ] && [ \"$(stat -c %a {b})\" = 700 ] || "
               f"{{ echo '{base} is not ours alone (owner or mode is not us, 0700); remove it' >&2; exit 4; }}; }} && "
               f"mkdir -m 755 {d}", None, f"make the secrets directory {directory}")
    try:
        for name, value in sorted(files.items()):
            path = shlex.quote(f"{directory}/{name}")
            _run(host, f"umask 333; cat > {path}", value, f"write secret file {directory}/{name}")
    except BaseException:
        discard(host, directory)
        raise
    return directory


def directory_of(attrs: dict | None) -> str | None:
    """The secrets directory a container (its inspect answer) mounts, if ours."""
    for mount in (attrs or {}).get("Mounts") or []:
        source = mount.get("Source") or ""
        if mount.get("Destination") == SECRETS_DIR and source.startswith(f"{HOST_TMPFS}/reconciler-secrets."):
            return source
    return None


def discard(host: "DockerHost", directory: str | None) -> None:
    """Remove a secrets directory (the container that mounted it is gone)."""
    if not directory:
        return
    base = _base(host)
    if os.path.dirname(directory) != base:
        return  # not one this user made: not ours to remove
    _run(host, f"rm -rf -- {shlex.quote(directory)}", None, f"remove the secrets directory {directory}")
