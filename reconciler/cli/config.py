"""The agent's settings file, read by every command: identity, state
directory, timeouts.

One file on the deploy server, next to the unit's environment file,
``/etc/reconciler/reconciler.toml`` (or the file ``$RECONCILER_CONFIG``
names; an empty ``$RECONCILER_CONFIG`` means none), so that the everyday
``reconciler plan``, ``status`` and ``lock`` from a shell need no flags and
find what the agent uses::

    identity = "/etc/reconciler/id_ed25519"   # SSH key for the hosts
    state_dir = "/var/lib/reconciler"          # the agent's journal, locks, status

    [timeouts]
    connect = 10            # SSH connect timeout per host, seconds
    keep_connections = 600  # the agent keeps idle host connections this long, seconds

Every key is optional.  A flag wins over an environment variable, which
wins over this file (for the state directory see ``_agent.resolve_state``).
Relative paths are relative to the file's directory.  An unknown key is an
error naming the file: a setting that is silently ignored is worse than none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from reconciler.errors import StalledError

DEFAULT_PATH = Path("/etc/reconciler/reconciler.toml")
VARIABLE = "RECONCILER_CONFIG"

_PATHS = ("identity", "state_dir")
_TIMEOUTS = ("connect", "keep_connections")


@dataclass(frozen=True)
class Settings:
    path: Path | None = None  # the file read; None when there is none
    identity: str | None = None
    state_dir: Path | None = None
    connect_timeout: float | None = None
    keep_connections: float | None = None

    def where(self, key: str) -> str:
        """How a value's origin is shown (status, lock, error messages)."""
        return f"{key} in {self.path}"


def location(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The settings file this process reads, or None (``$RECONCILER_CONFIG=''``)."""
    if VARIABLE in environ:
        return Path(environ[VARIABLE]) if environ[VARIABLE] else None
    return DEFAULT_PATH


def load(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings, or empty ones when no file is there.

    The default file may be absent; a file that ``$RECONCILER_CONFIG`` names
    must exist (a typo there would otherwise be a silent no-op).
    """
    path = location(environ)
    if path is None:
        return Settings()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if VARIABLE in environ:
            raise StalledError(f"{path}: no such file (named by ${VARIABLE})") from None
        return Settings()
    except OSError as exc:
        raise StalledError(f"{path}: cannot read the settings file: {exc.strerror}") from None
    return parse(path, data)


def parse(path: Path, data: bytes) -> Settings:
    import tomllib  # only a command that needs a setting pays for it

    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StalledError(f"{path}: not valid TOML: {exc}") from None
    _known(path, doc, (*_PATHS, "timeouts"), "")
    timeouts = doc.get("timeouts", {})
    if not isinstance(timeouts, dict):
        raise StalledError(f"{path}: timeouts: expected a table ([timeouts]), got {type(timeouts).__name__}")
    _known(path, timeouts, _TIMEOUTS, "timeouts.")
    values: dict = {"path": path}
    for key in _PATHS:
        if key in doc:
            if not isinstance(doc[key], str) or not doc[key]:
                raise StalledError(f"{path}: {key}: expected a path as a string, got {doc[key]!r}")
            values[key] = path.parent / Path(doc[key]).expanduser()
    if "identity" in values:
        values["identity"] = str(values["identity"])
    for key in _TIMEOUTS:
        if key in timeouts:
            value = timeouts[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise StalledError(f"{path}: timeouts.{key}: expected a number of seconds above 0, got {value!r}")
            values["connect_timeout" if key == "connect" else key] = float(value)
    return Settings(**values)


def _known(path: Path, table: dict, allowed: tuple[str, ...], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            import difflib  # only for the message: every command reads this file

            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(prefix + a for a in allowed)})"
            raise StalledError(f"{path}: unknown setting {prefix}{key}{hint}")
