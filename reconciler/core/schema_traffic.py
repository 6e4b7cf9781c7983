"""The traffic parts of ``expose``: mirroring, pausing and maintenance.

::

    expose:
      port: 8080
      mirror: {percent: 10, for: 30s}      # before each switch: 10 % of live requests copied to green
                                           # for 30 s, green's answers discarded
      database_pause: {deadline: 20s}      # requests held while a deploy's database steps run
      pause: {deadline: 30s}               # requests held now (``reconciler pause`` / ``resume``)
      maintenance: {page: "<h1>Back soon</h1>"}   # every request 503 with this page (``reconciler maintenance``)

Each held request waits at most ``deadline`` and is then answered 503
("held too long"), so nothing hangs past it.  What the router does with
them is ``core.traffic``.
"""

from __future__ import annotations

from reconciler.core import model
from reconciler.core.schema_fields import BAD, duration, integer, mapping, string
from reconciler.core.schema_yaml import Node, Problems

TRAFFIC_KEYS = ("mirror", "pause", "database_pause", "maintenance")
MAX_DEADLINE = 600.0  # a held request's connection stays open that long at most
MAX_PAGE = 64 * 1024  # HAProxy answers from a buffer (tune.bufsize 16 KB by default holds the page)


def parse_mirror(node: Node, problems: Problems, what: str) -> model.Mirror:
    fields = mapping(node, ("percent", "for"), problems, what)
    if fields is BAD:
        return BAD
    if "percent" not in fields:
        problems.at(node, f"{what}: missing 'percent' (the share of live requests copied to green, 1-100)")
        return BAD
    percent = integer(fields["percent"], problems, f"{what}.percent", 1, 100)
    seconds = duration(fields["for"], problems, f"{what}.for", positive=True) if "for" in fields else 30.0
    if BAD in (percent, seconds):
        return BAD
    return model.Mirror(percent, seconds)


def parse_pause(node: Node, problems: Problems, what: str) -> model.Pause:
    fields = mapping(node, ("deadline",), problems, what)
    if fields is BAD:
        return BAD
    deadline = duration(fields["deadline"], problems, f"{what}.deadline", positive=True) if "deadline" in fields else 30.0
    if deadline is BAD:
        return BAD
    if deadline > MAX_DEADLINE:
        problems.at(fields["deadline"], f"{what}.deadline: at most {MAX_DEADLINE:.0f}s (a held request keeps its connection open)")
        return BAD
    return model.Pause(deadline)


def parse_maintenance(node: Node, problems: Problems, what: str) -> model.Maintenance:
    fields = mapping(node, ("page",), problems, what)
    if fields is BAD:
        return BAD
    page = string(fields["page"], problems, f"{what}.page") if "page" in fields else None
    if page is BAD:
        return BAD
    if page is not None and len(page.encode()) > MAX_PAGE // 4:
        problems.at(fields["page"], f"{what}.page: at most {MAX_PAGE // 4} bytes (the router answers it from one buffer)")
        return BAD
    return model.Maintenance(page)


def parse_traffic(fields: dict[str, Node], problems: Problems, what: str) -> dict:
    """The traffic fields of an ``expose`` mapping, as ``model.Expose`` keywords (BAD values on a problem)."""
    out = {}
    if "mirror" in fields:
        out["mirror"] = parse_mirror(fields["mirror"], problems, f"{what}.mirror")
    for key in ("pause", "database_pause"):
        if key in fields:
            out[key] = parse_pause(fields[key], problems, f"{what}.{key}")
    if "maintenance" in fields:
        out["maintenance"] = parse_maintenance(fields["maintenance"], problems, f"{what}.maintenance")
    return out
