"""Shared fixtures.  ``fleet``: the local sandbox, brought up once per session.

Fleet tests need root (network namespaces, dockerd, sshd); they fail rather
than skip without it, so a green run always means the fleet was exercised.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def fleet():
    """The running sandbox (``reconciler.sandbox.Sandbox``), up for the whole session.

    Left up at the end: the next session reuses it in a second, and a human
    can inspect what the tests left (``reconciler sandbox down`` stops it).
    """
    if os.geteuid() != 0:
        pytest.fail("fleet tests need root: the sandbox creates network namespaces and runs dockerd "
                    "and sshd; run the suite as root (e.g. `sudo make test`)", pytrace=False)
    from reconciler.sandbox import fleet as sandbox_fleet

    sandbox = sandbox_fleet.up(3)
    print(f"\nsandbox up in {sandbox.elapsed_seconds:.1f}s")
    return sandbox


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    """The session's order, for the fleet's sake:

    - a test marked ``late`` runs after every other test but those below: a
      scenario it finishes (begun by a session fixture with its module's
      first test) waits through the rest of the suite instead of alone, e.g.
      dockerd's 300 s idle timeout;
    - a test marked ``takes_fleet_down`` runs last of all: it stops the
      shared sandbox, which would cut such a scenario off.

    Otherwise the collection order stands."""
    def rank(item) -> int:
        if item.get_closest_marker("takes_fleet_down"):
            return 2
        return 1 if item.get_closest_marker("late") else 0

    items[:] = sorted(items, key=rank)  # stable: each group keeps its order
