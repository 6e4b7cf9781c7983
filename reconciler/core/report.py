"""Plans, outcomes and host states rendered for people and for machines.  Pure."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from typing import Mapping

from reconciler.core import managed
from reconciler.core.model import Environment
from reconciler.core.managed import ObservedHost
from reconciler.core.plan import Plan

_SYMBOL = {"create": "+", "update": "~", "remove": "-", "heal": "!"}


def plan_text(plan: Plan) -> str:
    if plan.in_sync and not plan.findings:
        return f"{plan.environment} @ {plan.revision[:12]}: in sync, nothing to do"
    lines = [f"{plan.environment} @ {plan.revision[:12]}: {len(plan.changes)} change(s)"]
    for change in plan.changes:
        lines.append(f"  {_SYMBOL.get(change.kind, '?')} {change.host}/{change.service}: {change.kind}")
        for name, old, new in change.fields:
            lines.append(f"      {name}: {_show(old)} -> {_show(new)}")
    for finding in plan.findings:
        where = f"{finding.host}/{finding.service}" if finding.service else finding.host
        lines.append(f"  ? {where}: {finding.kind}: {finding.detail}")
    if plan.actions:
        lines.append("  steps:")
        for action in plan.actions:
            where = f"{action.host}/{action.service}" if action.host or action.service else "database"
            lines.append(f"    {action.step:<16} {where}: {action.reason}")
    return "\n".join(lines)


def _show(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def to_jsonable(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        data = {k: to_jsonable(v) for k, v in asdict(value).items()}
        if hasattr(value, "step"):
            data["step"] = value.step
        return data
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def plan_json(plan: Plan) -> str:
    data = {
        "environment": plan.environment,
        "revision": plan.revision,
        "in_sync": plan.in_sync,
        "changes": to_jsonable(list(plan.changes)),
        "findings": to_jsonable(list(plan.findings)),
        "actions": [dict(to_jsonable(a), step=a.step) for a in plan.actions],
    }
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def running_rows(desired: Environment, observed: Mapping[str, ObservedHost]) -> list[dict]:
    """One row per managed container of the environment: what runs where."""
    rows = []
    for host_name in sorted(observed):
        for c in observed[host_name].managed(desired.name):
            want = None
            try:
                service = desired.service(c.service or "")
                want = managed.config_hash(service) if host_name in service.hosts else None
            except KeyError:
                pass
            if c.role == managed.ROLE_ACTIVE:
                drift = [] if c.running else [f"state {c.state}"]
                if want is None:
                    drift.append("not desired here")
                elif c.config_hash != want:
                    drift.append("config differs from desired")
            else:
                drift = []
            rows.append(
                {
                    "host": host_name,
                    "service": c.service,
                    "role": c.role,
                    "container": c.name,
                    "state": c.state,
                    "health": c.health,
                    "image": c.image,
                    "revision": c.revision,
                    "drift": drift,
                }
            )
    from reconciler.core import router_image  # its router containers: no service's, shown apart

    return rows + router_image.status_rows(desired, observed)


def running_text(rows: list[dict], *, include_retired: bool = False) -> str:
    lines = []
    for row in rows:
        if row["role"] != managed.ROLE_ACTIVE and not include_retired:
            continue
        drift = f"  DRIFT: {', '.join(row['drift'])}" if row["drift"] else ""
        health = f" ({row['health']})" if row["health"] else ""
        lines.append(
            f"  {row['host']:<8} {row['service']:<14} {row['role']:<6} {row['state']}{health}  "
            f"rev {str(row['revision'])[:12]}  {row['image']}{drift}"
        )
    return "\n".join(lines) if lines else "  (nothing managed runs)"
