"""Host-file secrets (``file: /path/on/the/host``) in the config hash.

An encrypted secret's digest comes from the commit (``secrets.resolve``);
a host file's content is not in git, so a rotated file (a new password put
there by whoever manages the host) would change nothing in the desired
state and nothing would redeploy.  Once the run's hosts are open, each
``file:`` secret is read on every host of its service (the same read the
delivery does, in memory, never logged) and its keyed digest goes into the
secret's ``digest``: the config hash then follows the content, and a
rotation redeploys the service.

The digest is an HMAC-SHA256 keyed by a key derived (HKDF) from the SSH
identity the run reaches the hosts with: a secret of the agent's machine
that the agent, ``plan`` and ``apply`` all hold, so that they compute the
same hash, and that nobody who sees a label, a plan or a note holds.  Two
consequences, said where the secret is documented (README): changing that
identity redeploys the services that have host-file secrets once; a
``plan`` run with another identity shows them as changed.

One digest per service, over what every one of its hosts holds (host names
and contents): a file rotated on any host redeploys the service.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from pathlib import Path
from typing import Any, Mapping

from reconciler.adapters.secrets import DIGEST_PREFIX
from reconciler.core.model import Environment
from reconciler.errors import SecretUnreadable

_HKDF_INFO = b"reconciler host-file secret digest v1"


def digest_key(identity_file: str) -> bytes:
    """The MAC key derived from the SSH identity file's bytes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    try:
        material = Path(identity_file).read_bytes()
    except OSError as exc:
        raise SecretUnreadable(f"SSH identity {identity_file}: {exc.strerror}; it keys the digest of host-file secrets") from None
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(material)


def digest(name: str, values: Mapping[str, bytes], key: bytes) -> str:
    """The keyed digest of a secret's content on each host (host -> bytes)."""
    mac = hmac.new(key, name.encode() + b"\0", hashlib.sha256)
    for host in sorted(values):
        mac.update(host.encode() + b"\0" + len(values[host]).to_bytes(8, "big") + values[host])
    return DIGEST_PREFIX + mac.hexdigest()[:32]


def _identity(hosts: Mapping[str, Any]) -> str | None:
    for driver in hosts.values():
        found = getattr(driver, "identity_file", None)
        if found:
            return found
    return None


def resolve(environment: Environment, hosts: Mapping[str, Any]) -> Environment:
    """``environment`` with each host-file secret's keyed digest filled in.

    A file missing or unreadable on a host stops the run here, before any
    container changes (``SecretUnreadable`` names the host and the file).
    Host drivers that carry no SSH identity (test fakes) leave the digests
    as they were: the reference's hash."""
    wanted = [s for service in environment.services for s in service.secrets if s.file is not None]
    if not wanted:
        return environment
    identity = _identity(hosts)
    if identity is None:
        return environment
    key = digest_key(identity)
    services = []
    for service in environment.services:
        refs = []
        for secret in service.secrets:
            if secret.file is not None:
                values = {host: hosts[host].read_secret_file(secret.file).encode() for host in service.hosts if host in hosts}
                secret = dataclasses.replace(secret, digest=digest(secret.name, values, key))
            refs.append(secret)
        services.append(dataclasses.replace(service, secrets=tuple(refs)))
    return dataclasses.replace(environment, services=tuple(services))
