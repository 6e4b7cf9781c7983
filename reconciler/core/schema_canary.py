"""The rollout keys of a canary and of the watch after the switch.

::

    services:
      web:
        expose: {hosts: [shop.example.com], port: 8080}
        rollout:
          strategy: canary
          steps: [0, 5, 25, 50, 100]   # the new version's share of new requests, in percent
          pause: 1m                    # held after every step but the last
          abort: {errors: 1%}          # or a count: {errors: 5}; also the watch's rule
          sticky: true                 # a client keeps the version it got (a cookie)
          qa: {header: X-Canary, cookie: canary}  # these requests go to the new version first
          watch: 5m                    # after the last switch

``steps`` strictly increase and end at 100; a first 0 is a step of QA
traffic only.  Every key but ``watch`` and ``abort`` needs ``strategy:
canary``, and all of them need ``expose`` (the router that shifts weights,
counts errors and switches back): a key that would do nothing is refused.

``batch_size`` is refused with ``strategy: canary``: a canary's share is
the service's, shifted on every host of the service together (as Argo
Rollouts and Flagger shift a service's traffic weight, not host by host),
so host batches would have nothing to do.  Batches are for blue-green.
"""

from __future__ import annotations

import re

from reconciler.core import model
from reconciler.core.router import TOKEN_RE
from reconciler.core.schema_fields import BAD, boolean, duration, items, mapping, string
from reconciler.core.schema_yaml import Node, Problems

CANARY_KEYS = ("steps", "pause", "sticky", "qa")
KEYS = CANARY_KEYS + ("watch", "abort")
_PERCENT_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")


def parse(fields: dict[str, Node], problems: Problems, what: str, *, strategy: str, exposed: bool) -> dict:
    """The Rollout fields these keys give (``canary``, ``watch``, the abort rule); BAD values on a problem."""
    out: dict = {}
    for key in KEYS:
        if key in fields and not exposed:
            problems.at(fields[key], f"{what}.{key}: needs 'expose' (the router shifts, watches and switches back)")
            out["canary"] = BAD
    for key in CANARY_KEYS:
        if key in fields and strategy not in ("canary", BAD):
            problems.at(fields[key], f"{what}.{key}: only with 'strategy: canary'")
            out["canary"] = BAD
    if "batch_size" in fields and strategy == "canary":
        problems.at(fields["batch_size"], f"{what}.batch_size: a canary shifts the weights on every host of the "
                                          "service together (its share is the service's); remove batch_size, or "
                                          "use 'strategy: blue-green' to deploy hosts in batches")
        out["canary"] = BAD
    if "watch" in fields:
        out["watch"] = duration(fields["watch"], problems, f"{what}.watch", positive=True)
    if "abort" in fields:
        if "watch" not in fields and strategy != "canary":
            problems.at(fields["abort"], f"{what}.abort: applies to a canary's pauses and the watch; "
                                         "set 'watch' or 'strategy: canary'")
            out["canary"] = BAD
        out.update(_abort(fields["abort"], problems, f"{what}.abort"))
    if strategy == "canary" and out.get("canary") is not BAD:
        out["canary"] = _canary(fields, problems, what)
    return out


def _abort(node: Node, problems: Problems, what: str) -> dict:
    fields = mapping(node, ("errors",), problems, what)
    if fields is BAD:
        return {"max_errors": BAD}
    if "errors" not in fields:
        problems.at(node, f"{what}: give 'errors', a count (5) or a share of requests (1%)")
        return {"max_errors": BAD}
    errors = fields["errors"]
    value = errors.value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return {"max_errors": value, "max_error_rate": None}
    match = _PERCENT_RE.match(value.strip()) if isinstance(value, str) else None
    if match and 0 <= float(match.group(1)) <= 100:
        return {"max_errors": None, "max_error_rate": float(match.group(1)) / 100}
    problems.at(errors, f"{what}.errors: expected a count (5) or a percentage between 0% and 100% (1%), "
                        f"got {errors.text or value!r}")
    return {"max_errors": BAD}


def _canary(fields: dict[str, Node], problems: Problems, what: str) -> model.Canary:
    values: dict = {}
    if "steps" in fields:
        values["steps"] = _steps(fields["steps"], problems, f"{what}.steps")
    if "pause" in fields:
        values["pause"] = duration(fields["pause"], problems, f"{what}.pause", positive=True)
    if "sticky" in fields:
        values["sticky"] = boolean(fields["sticky"], problems, f"{what}.sticky")
    if "qa" in fields:
        qa = mapping(fields["qa"], ("header", "cookie"), problems, f"{what}.qa")
        if qa is BAD:
            values["qa_header"] = BAD
        elif not qa:
            problems.at(fields["qa"], f"{what}.qa: give 'header' and/or 'cookie' (a QA request carries it)")
            values["qa_header"] = BAD
        for key in ("header", "cookie"):
            if qa is not BAD and key in qa:
                values[f"qa_{key}"] = string(qa[key], problems, f"{what}.qa.{key}", TOKEN_RE,
                                             "use letters, digits, '-' or '_'")
    steps = values.get("steps")
    if steps not in (None, BAD) and steps[0] == 0 and not (values.get("qa_header") or values.get("qa_cookie")):
        problems.at(fields["steps"].value[0], f"{what}.steps: a first step of 0 holds QA traffic only; "
                                              "it needs 'qa' (a header or cookie that reaches the new version)")
        values["steps"] = BAD
    return BAD if BAD in values.values() else model.Canary(**values)


def _steps(node: Node, problems: Problems, what: str) -> tuple[int, ...]:
    nodes = items(node, problems, what)
    if nodes is BAD:
        return BAD
    if len(nodes) < 2:
        problems.at(node, f"{what}: give at least two steps ending at 100 (one step is a blue-green switch)")
        return BAD
    steps: list[int] = []
    for item in nodes:
        value = item.value
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            problems.at(item, f"{what}: each step is a whole percentage between 0 and 100, got {item.text or value!r}")
            return BAD
        if steps and value <= steps[-1]:
            problems.at(item, f"{what}: steps must increase, got {value} after {steps[-1]}")
            return BAD
        steps.append(value)
    if steps[-1] != 100:
        problems.at(nodes[-1], f"{what}: the last step must be 100 (every request on the new version), got {steps[-1]}")
        return BAD
    return tuple(steps)
