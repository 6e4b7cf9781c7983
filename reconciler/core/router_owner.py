"""Which environment owns a host's router, as its config file says.  Pure.

One environment owns a host's router: the config file it writes says so in
its header (``# owner: ENV``, beside the skeleton hash, read with it from
the first lines).  Another environment that finds the router serving live
servers for that owner is refused (``RouterOwned``, naming both): writing
its own config would drop the owner's backends on the next reload.  A
router whose owner routes nothing live any more (no server UP with a
weight: its services were removed or moved) may be taken over.  A router
run from an image is owned by its container's label instead
(``core.router_image``).
"""

from __future__ import annotations

from typing import Iterable

from reconciler.core import router as rt

_MARK = "# owner: "


def stamp(config_text: str, owner: str | None) -> str:
    """``config_text`` with ``# owner: OWNER`` after its first comment lines (unchanged for None)."""
    if owner is None:
        return config_text
    lines = config_text.split("\n")
    at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "\n".join([*lines[:at], f"{_MARK}{owner}", *lines[at:]])


def owner_in(config_text: str) -> str | None:
    """The owner a config file's header names; None for a file without one."""
    for line in config_text.splitlines()[:5]:
        if line.startswith(_MARK):
            return line[len(_MARK):].strip() or None
    return None


def live(servers: Iterable[rt.ServerState]) -> tuple[str, ...]:
    """The servers that take requests now: UP, with a weight, not drained."""
    return tuple(f"{s.backend}/{s.name}" for s in servers if s.up and s.weight > 0 and not s.drain)


def refusal(environment: str, owner: str | None, servers: Iterable[rt.ServerState], host: str, config_file: str) -> str | None:
    """Why ``environment`` may not write ``host``'s router config; None when it may."""
    if owner is None or owner == environment:
        return None
    serving = live(servers)
    if not serving:
        return None
    return (f"the router's config {config_file} belongs to environment {owner!r}, whose servers "
            f"{', '.join(serving[:3])}{' ...' if len(serving) > 3 else ''} take requests there; environment "
            f"{environment!r} cannot own it too: one environment owns a host's router (give one of them "
            "another router, or remove the other's exposed services from this host first)")
