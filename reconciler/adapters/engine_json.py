"""The Engine API's answers about containers, read into what the planner
compares (``core.managed.ObservedContainer``): from an inspect, and from one
entry of the container list (what ``observe`` asks for: one request per
host).  Pure functions; the requests are ``hosts.DockerHost``'s.
"""

from __future__ import annotations

from reconciler.core.managed import ObservedContainer


def from_inspect(attrs: dict) -> ObservedContainer:
    """An ObservedContainer from the engine's inspect of a container."""
    state = attrs.get("State") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    health = (state.get("Health") or {}).get("Status")
    return ObservedContainer(
        id=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        state=state.get("Status", "unknown"),
        labels=tuple(sorted(labels.items())),
        image_id=attrs.get("Image", ""),
        health=health,
        restart_count=int(attrs.get("RestartCount") or 0),
        finished_at=state.get("FinishedAt") or "",
        created=_epoch(attrs.get("Created") or ""),
    )


def _epoch(rfc3339: str) -> float:
    import datetime

    try:
        return datetime.datetime.fromisoformat(rfc3339[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


def from_list_entry(summary: dict) -> ObservedContainer:
    """An ObservedContainer from one entry of the engine's container list."""
    status = summary.get("Status") or ""
    health = None
    for word, value in (("(healthy)", "healthy"), ("(unhealthy)", "unhealthy"), ("(health: starting)", "starting")):
        if word in status:
            health = value
    names = summary.get("Names") or ["/" + summary["Id"][:12]]
    return ObservedContainer(
        id=summary["Id"],
        name=names[0].lstrip("/"),
        state=summary.get("State", "unknown"),
        labels=tuple(sorted((summary.get("Labels") or {}).items())),
        image_id=summary.get("ImageID", ""),
        health=health,
        created=float(summary.get("Created") or 0),
    )
