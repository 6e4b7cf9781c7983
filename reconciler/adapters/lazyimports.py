"""A module a library imports at its top and never uses here, loaded only if used.

paramiko's ``config`` module imports invoke at its top, for ssh config's
``Match exec``; reconciler reads no ssh config.  invoke (with the
unittest.mock and asyncio it imports) is 35-50 ms: deferred, it is loaded
where fabric is imported, in the threads opening the hosts beside their
handshakes (``ssh.connect``), and not on the main thread when it imports
paramiko before those threads start.  ``defer(name)`` puts a stand-in for the module in
``sys.modules``: ``import name`` binds the stand-in and costs nothing, and
the first attribute asked of it that it does not have imports the real
module (which then replaces it in ``sys.modules``) and answers from that.
So whoever really uses the module still gets all of it.

(``importlib.util.LazyLoader`` does not do this before Python 3.12: the
import statement itself reads the lazy module's ``__spec__``, which loads it.)
Where the module is not installed (paramiko does not need invoke), nothing
is done.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

_loading = threading.RLock()


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module not loaded yet."""

    def __getattr__(self, attr: str):
        return getattr(load(self), attr)


def is_deferred(module: object) -> bool:
    """Whether ``module`` is a stand-in, the module itself not loaded (yet)."""
    return isinstance(module, _Deferred)


def load(stand_in: types.ModuleType) -> types.ModuleType:
    """The real module behind ``stand_in`` (imported now if needed)."""
    name = stand_in.__name__
    with _loading:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        return importlib.import_module(name)


def defer(name: str) -> None:
    """Make ``name`` load on first use, unless it is imported already or not installed."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = _Deferred(name)
    stand_in.__spec__ = spec  # what `import name` checks of a module already in sys.modules
    sys.modules[name] = stand_in
