"""The one rule for "this looks like a secret": the validator refuses such
an env entry in the repository, and the plan masks such a value when it
shows one.  Pure, and free of the YAML stack so that the planner can use it.
"""

from __future__ import annotations

import re

_SECRET_WORDS = {"PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "TOKEN", "KEY", "PRIVATE", "CREDENTIAL", "CREDENTIALS", "APIKEY"}
_REFERENCE_SUFFIXES = {"FILE", "PATH", "DIR", "NAME", "ID", "TTL", "LENGTH", "SIZE"}
_SECRET_VALUE_RE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}")


def looks_like_plain_secret(key: str, value: str) -> bool:
    """True for ``DB_PASSWORD: hunter2``-like entries (never for ``*_FILE`` paths).

    A name made of words such as PASSWORD, TOKEN, KEY marks a secret unless its
    last word says it is a reference (``_FILE``, ``_PATH``, ``_ID``...); an
    empty value or an absolute path is a reference too.  Some values are
    secrets whatever their name (a PEM private key, an AWS or GitHub token).
    """
    if _SECRET_VALUE_RE.search(value):
        return True
    words = [w for w in re.split(r"[_\-.]", key.upper()) if w]
    if not words or words[-1] in _REFERENCE_SUFFIXES or not (set(words) & _SECRET_WORDS):
        return False
    return bool(value) and not value.startswith("/")
