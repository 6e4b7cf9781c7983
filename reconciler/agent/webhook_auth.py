"""Who may poke the agent's webhook: the forge that knows the shared secret.

Each forge proves it differently (their documented formats):

- GitHub (and Gitea, which sends it too): ``X-Hub-Signature-256: sha256=<hex>``,
  the HMAC-SHA256 of the raw body keyed with the secret;
- Gitea: ``X-Gitea-Signature: <hex>``, the same HMAC without the prefix;
- GitLab: ``X-Gitlab-Token: <secret>``, the secret itself (GitLab signs
  nothing), compared in constant time.

Every one of these headers a request carries must verify, and it must carry
at least one.  All comparisons go through ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Mapping

from reconciler.errors import StalledError

# GitHub caps a delivery at 25 MB, but a push event's payload is a few KB to a
# few hundred; the body is held in memory to be hashed.
MAX_BODY = 4 * 1024 * 1024

GITHUB = "X-Hub-Signature-256"
GITEA = "X-Gitea-Signature"
GITLAB = "X-Gitlab-Token"


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The secret in ``path`` (one line; surrounding whitespace dropped).

    Refused when missing, empty, or readable by everyone: a secret others can
    read proves nothing about who sent a request."""
    file = Path(path)
    try:
        info = file.stat()
        data = file.read_bytes()
    except OSError as exc:
        raise StalledError(f"{file}: cannot read the webhook secret: {exc.strerror}") from exc
    if info.st_mode & stat.S_IROTH:
        raise StalledError(f"{file}: the webhook secret is readable by everyone; chmod o-r {file}")
    secret = data.strip()
    if not secret:
        raise StalledError(f"{file}: the webhook secret is empty")
    return secret


def _hmac_hex(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def refusal(headers: Mapping[str, str], body: bytes, secret: bytes) -> str | None:
    """Why the request is refused, or None when it is authenticated.

    ``headers`` is looked up by name as http.server's message does (case
    does not matter there)."""
    checked = []
    github = headers.get(GITHUB)
    if github is not None:
        scheme, _, given = github.strip().partition("=")
        if scheme != "sha256" or not hmac.compare_digest(given.lower().encode(), _hmac_hex(secret, body).encode()):
            return f"{GITHUB} does not match the body"
        checked.append(GITHUB)
    gitea = headers.get(GITEA)
    if gitea is not None:
        if not hmac.compare_digest(gitea.strip().lower().encode(), _hmac_hex(secret, body).encode()):
            return f"{GITEA} does not match the body"
        checked.append(GITEA)
    gitlab = headers.get(GITLAB)
    if gitlab is not None:
        # http.server decodes header bytes as latin-1: encoding back gives the bytes sent.
        if not hmac.compare_digest(gitlab.strip().encode("latin-1", "replace"), secret):
            return f"{GITLAB} is not the shared token"
        checked.append(GITLAB)
    if not checked:
        return f"unsigned: no {GITHUB}, {GITEA} or {GITLAB} header"
    return None
