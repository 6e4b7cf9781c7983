"""reconciler render: print an environment (or one service) fully resolved.

What a reviewer needs to see what will run: reconciler.yaml's defaults and the
model's own defaults applied, host groups expanded, durations in seconds;
and written in the keys a user writes in environment.yaml (``type`` and
``status`` of a health check, ``"8080:80/tcp"`` ports), so the output can be
pasted back: an environment's as ``environments/<env>/environment.yaml``, a
service's as ``environments/<env>/services/<name>.yaml``, and it validates
to the same thing (tests/test_render.py round-trips the examples).
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys

from reconciler.cli.commands._common import usage
from reconciler.cli.commands._source import add_source_arguments, load_snapshot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", help="environment to render (optional when the repository has only one)")
    parser.add_argument("--service", help="render only this service (as a services/<name>.yaml file)")
    parser.add_argument("--json", action="store_true", help="JSON instead of YAML")
    add_source_arguments(parser)


# ------------------------------------------------- model -> the YAML keys (pure)

# The keys a health check of each type may carry besides the timing ones
# (the schema refuses the others: schema_service._HEALTH_KIND_KEYS).
# Every key service_document writes when the service has it; the schema's
# SERVICE_KEYS must be the same set (tests/test_render.py).
RENDERED_SERVICE_KEYS = ("image", "hosts", "command", "env", "ports", "volumes", "networks", "restart", "resources",
                         "labels", "health", "rollout", "depends_on", "secrets", "migrations", "stop_timeout", "expose")
_HEALTH_KEYS = {"http": ("port", "path", "status", "body_contains"), "tcp": ("port",), "command": ("command",),
                "docker": (), "running": ()}


def environment_document(environment) -> dict:
    """``environment`` as the mapping an environment.yaml holds."""
    base = f"environments/{environment.name}"
    doc: dict = {
        "hosts": {h.name: {"address": h.address, "user": h.user, "port": h.port, **({"groups": list(h.groups)} if h.groups else {}),
                           **({"docker_socket": h.docker_socket} if h.docker_socket else {})}
                  for h in environment.hosts},
        "policy": _fields(environment.policy),
    }
    if environment.database is not None:
        doc["database"] = {k: v for k, v in _fields(environment.database).items() if v is not None}
    doc["known_hosts"] = posixpath.relpath(environment.known_hosts, base)
    if environment.router is not None:
        doc["router"] = {k: v for k, v in _fields(environment.router).items() if v is not None}
        if environment.router.image is not None:  # the engine reloads and checks it: no reload, no check
            doc["router"].update(image=str(environment.router.image))
            del doc["router"]["reload"], doc["router"]["check"]
    doc["services"] = {s.name: service_document(s) for s in environment.services}
    return doc


def service_document(service) -> dict:
    """``service`` as the mapping under ``services: NAME:`` (or in services/NAME.yaml)."""
    doc: dict = {"image": str(service.image), "hosts": list(service.hosts)}
    if service.command is not None:
        doc["command"] = list(service.command)
    if service.env:
        doc["env"] = dict(service.env)
    if service.ports:
        doc["ports"] = [_port(p) for p in service.ports]
    if service.volumes:
        doc["volumes"] = [f"{v.source}:{v.target}{':ro' if v.read_only else ''}" for v in service.volumes]
    if service.networks:
        doc["networks"] = list(service.networks)
    doc["restart"] = service.restart
    resources = {k: v for k, v in _fields(service.resources).items() if v is not None}
    if resources:
        doc["resources"] = resources
    if service.labels:
        doc["labels"] = dict(service.labels)
    doc["health"] = _health(service.health)
    doc["rollout"] = _rollout(service.rollout)
    if service.depends_on:
        doc["depends_on"] = list(service.depends_on)
    if service.secrets:
        doc["secrets"] = [{"name": s.name, **({"env": s.env} if s.env else {}),
                           **({"as": s.delivery} if s.delivery != "env" else {}),
                           **({"file": s.file} if s.file else {"encrypted": s.encrypted})}
                          for s in service.secrets]
    if service.migrations is not None:
        m = service.migrations
        doc["migrations"] = {**({"path": m.path} if m.path is not None else {}),
                             **({"command": list(m.command)} if m.command else {}),
                             "allow_contract": m.allow_contract, "soak": m.soak}
    doc["stop_timeout"] = service.stop_timeout
    if service.expose is not None:
        e = service.expose
        doc["expose"] = {**({"hosts": list(e.hostnames)} if e.hostnames else {}),
                         **({"path": e.path} if e.path is not None else {}), "port": e.port, "drain": e.drain}
    return doc


def _rollout(rollout) -> dict:
    """The rollout keys a user writes; canary and watch keys only where they apply."""
    canary = rollout.canary if rollout.strategy == "canary" else None
    # A canary runs on every host at once: it takes no batch_size (core.schema_canary).
    doc: dict = {**({} if canary is not None else {"batch_size": rollout.batch_size}), "strategy": rollout.strategy}
    if canary is not None:
        doc.update(steps=list(canary.steps), pause=canary.pause, sticky=canary.sticky)
        qa = {k: v for k, v in (("header", canary.qa_header), ("cookie", canary.qa_cookie)) if v}
        if qa:
            doc["qa"] = qa
    if rollout.watch > 0:
        doc["watch"] = rollout.watch
    if canary is not None or rollout.watch > 0:
        errors = rollout.max_errors if rollout.max_errors is not None else f"{(rollout.max_error_rate or 0) * 100:g}%"
        doc["abort"] = {"errors": errors}
    return doc


def _fields(value) -> dict:
    import dataclasses

    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def _port(p) -> str:
    ip = f"[{p.host_ip}]" if ":" in p.host_ip else p.host_ip
    return f"{ip + ':' if ip else ''}{p.host_port}:{p.container_port}/{p.protocol}"


def _health(check) -> dict:
    doc: dict = {"type": check.kind}
    written = {"port": check.port, "path": check.path, "status": check.expected_status,
               "body_contains": check.body_contains, "command": list(check.command)}
    for key in _HEALTH_KEYS[check.kind]:
        if written[key] not in (None, []):
            doc[key] = written[key]
    doc.update(interval=check.interval, timeout=check.timeout, start_period=check.start_period,
               successes=check.successes, deadline=check.deadline)
    return doc


# ------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    from reconciler.core import schema
    from reconciler.errors import StalledError

    snapshot = load_snapshot(args)
    names = schema.list_environments(snapshot)
    if not args.env:
        if len(names) != 1:
            usage(args, f"--env is needed: {args.repo} has {len(names)} environments ({', '.join(names) or 'none'})")
        args.env = names[0]
    environment = schema.load_environment(snapshot, args.env)
    if args.service:
        try:
            data = service_document(environment.service(args.service))
        except KeyError:
            raise StalledError(f"no service {args.service!r} in {args.env} (have: "
                               f"{', '.join(s.name for s in environment.services) or 'none'})") from None
    else:
        data = environment_document(environment)
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=False)
        print()
    else:
        from ruamel.yaml import YAML

        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.width = 4096  # an image reference stays on one line
        yaml.sort_base_mapping_type_on_output = False
        yaml.dump(data, sys.stdout)
    return 0

