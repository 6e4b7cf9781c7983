"""How long a deploy held requests around its database steps (``expose.database_pause``).  Pure.

For the note in git: ``held(actions, records)`` gives, per host and
service, the seconds from the router's hold set (``HoldRequests`` done) to
its release (``ReleaseRequests`` done), read from the run's journal
records; a hold never released (the run failed before) counts to the
release the failure made, and a hold with no release recorded is left out.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from reconciler.core.traffic import DatabaseHold, HoldRequests


def held(actions: Iterable[object], records: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """host -> service -> seconds its requests were held for the database steps."""
    pairs = {(a.host, a.service) for a in actions
             if isinstance(a, DatabaseHold) and isinstance(getattr(a, "route", None), HoldRequests)}
    began: dict[tuple[str, str], float] = {}
    out: dict[str, dict[str, float]] = {}
    for r in records:
        pair = (r.get("host"), r.get("service"))
        if r.get("event") != "done" or pair not in pairs or not isinstance(r.get("at"), (int, float)):
            continue
        if r.get("step") == "HoldRequests":
            began.setdefault(pair, float(r["at"]))
        elif r.get("step") == "ReleaseRequests" and pair in began:
            out.setdefault(pair[0], {})[pair[1]] = round(float(r["at"]) - began[pair], 3)
    return out
