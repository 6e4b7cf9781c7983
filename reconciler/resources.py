"""Where the tool's non-code files are: hooks, templates, the systemd unit,
the example environment repository, the router's Lua (``haproxy/``, a real
directory under ``_data``, not a link).

They live under ``reconciler/_data/`` in every installation: in the source
tree as symlinks to the top-level ``hooks/ templates/ systemd/
desired-state/`` directories, in a wheel or an sdist as the files themselves
(see ``reconciler/_data/README.md``).  So one lookup, through
``importlib.resources``, serves a checkout, an editable install and a wheel
installed with pip or pipx alike; nothing here guesses a path relative to a
source tree that an installed tool does not have.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from reconciler.errors import StalledError

NAMES = ("hooks", "templates", "systemd", "desired-state", "haproxy")


def path(name: str) -> Path:
    """The directory ``name`` (one of ``NAMES``) of this installation."""
    if name not in NAMES:
        raise ValueError(f"unknown resource {name!r}; one of {', '.join(NAMES)}")
    found = resources.files("reconciler") / "_data" / name
    # A wheel installed by pip is unpacked, so this is a real directory; a
    # zipped installation would need importlib.resources.as_file, and no
    # installer we support makes one.
    directory = Path(str(found))
    if not directory.is_dir():
        raise StalledError(f"{directory}: missing from this installation of reconciler "
                           f"(the package data {name}/ was not installed); reinstall the wheel")
    return directory
