"""One service: a located mapping (defaults already merged) -> ``model.Service``."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core import model
from reconciler.core.schema_fields import BAD, argv, boolean, choice, duration, integer, mapping, number, string, string_list
from reconciler.core.schema_values import (
    MEMORY_RE,
    NAME_RE,
    RESTART_RE,
    parse_env,
    parse_image,
    parse_labels,
    parse_ports,
    parse_secrets,
    parse_volumes,
    resolve_hosts,
)
from reconciler.core import schema_canary
from reconciler.core.schema_router import parse_expose
from reconciler.core.schema_yaml import Node, Problems

SERVICE_KEYS = (
    "image", "hosts", "command", "env", "ports", "volumes", "networks", "restart", "resources",
    "labels", "health", "rollout", "depends_on", "secrets", "migrations", "stop_timeout", "expose",
)  # fmt: skip
# What reconciler.yaml `defaults: service:` may set: the shape of a service,
# never what it is (image, command, env, secrets are per service).
DEFAULTABLE_SERVICE_KEYS = ("hosts", "networks", "restart", "resources", "labels", "health", "rollout", "stop_timeout")
# Nested mappings a service and the defaults both set are merged key by key.
MERGED_KEYS = ("health", "rollout", "resources", "labels")
HEALTH_KEYS = ("type", "port", "path", "status", "body_contains", "command", "interval", "timeout", "start_period", "successes", "deadline")
_HEALTH_KIND_KEYS = {"http": {"port", "path", "status", "body_contains"}, "tcp": {"port"}, "command": {"command"}, "docker": set(), "running": set()}


@dataclass(frozen=True)
class HostIndex:
    """The environment's hosts and groups, for resolving ``hosts:``."""

    hosts: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class ParsedService:
    """A service (None when invalid) and what checks across services need.

    Hosts, ports and dependencies are kept even when the service itself is
    invalid, so one mistake does not hide a port clash or a cycle.
    """

    name: str
    service: model.Service | None
    hosts: tuple[str, ...]
    ports: tuple[tuple[model.PortMapping, Node], ...]
    depends_on: tuple[tuple[str, Node], ...]
    expose_node: Node | None = None  # where `expose` is written: the router checks report there


def parse_service(name: str, name_node: Node, node: Node, problems: Problems, index: HostIndex, require_digest: bool) -> ParsedService:
    what = f"services.{name}"
    if not NAME_RE.match(name):
        problems.at(name_node, f"{what}: service names use lowercase letters, digits and '-' (they name containers)")
    fields = mapping(node, SERVICE_KEYS, problems, what)
    if fields is BAD:
        return ParsedService(name, None, (), (), ())
    for required in ("image", "hosts"):
        if required not in fields:
            problems.at(name_node, f"{what}: missing {required!r}")
    image = parse_image(fields["image"], problems, f"{what}.image", require_digest) if "image" in fields else None
    hosts, hosts_ok = resolve_hosts(fields["hosts"], problems, f"{what}.hosts", index.hosts, index.groups) if "hosts" in fields else ((), False)
    ports = parse_ports(fields["ports"], problems, f"{what}.ports") if "ports" in fields else []
    expose = parse_expose(fields["expose"], problems, f"{what}.expose") if "expose" in fields else None
    if expose is not None and ports:
        problems.at(fields["ports"], f"{what}.ports: an exposed service publishes no host port; "
                                     "the router reaches each container at its own address")
    # An exposed service's checks go to the exposed port unless they say
    # otherwise (a bad expose is reported already: its port is a stand-in).
    exposed_port = None if expose is None else 1 if expose is BAD else expose.port
    checked_ports = [p for p, _ in ports] or ([model.PortMapping(0, exposed_port)] if exposed_port else [])
    env = parse_env(fields["env"], problems, f"{what}.env") if "env" in fields else {}
    secrets = parse_secrets(fields["secrets"], problems, f"{what}.secrets") if "secrets" in fields else ()
    for secret in secrets:
        if secret.env in env:
            problems.at(env[secret.env][0], f"{what}.env.{secret.env}: also set by secret {secret.name!r}; keep one")
    depends: list[tuple[str, Node]] = []
    if "depends_on" in fields:
        names = string_list(fields["depends_on"], problems, f"{what}.depends_on")
        if names is not BAD:
            depends = list(zip(names, fields["depends_on"].value))
    kwargs = {
        "command": argv(fields["command"], problems, f"{what}.command") if "command" in fields else None,
        "volumes": parse_volumes(fields["volumes"], problems, f"{what}.volumes") if "volumes" in fields else (),
        "networks": string_list(fields["networks"], problems, f"{what}.networks") if "networks" in fields else (),
        "restart": string(fields["restart"], problems, f"{what}.restart", RESTART_RE, "use no, always, unless-stopped or on-failure[:N]")
        if "restart" in fields
        else "unless-stopped",
        "resources": _resources(fields["resources"], problems, f"{what}.resources") if "resources" in fields else model.Resources(),
        "labels": parse_labels(fields["labels"], problems, f"{what}.labels") if "labels" in fields else (),
        "health": _health(fields.get("health"), problems, f"{what}.health", checked_ports),
        "rollout": _rollout(fields["rollout"], problems, f"{what}.rollout", exposed="expose" in fields)
        if "rollout" in fields
        else model.Rollout(),
        "expose": expose,
        "migrations": _migrations(fields["migrations"], problems, f"{what}.migrations") if "migrations" in fields else None,
        "stop_timeout": duration(fields["stop_timeout"], problems, f"{what}.stop_timeout") if "stop_timeout" in fields else 10.0,
    }
    expose_node = fields.get("expose")
    check = kwargs["health"]
    if expose not in (None, BAD) and check is not BAD and check.kind in ("http", "tcp") and check.port != expose.port:
        # The router checks the port it sends requests to; another one would be checked by the engine only.
        problems.at(fields["health"], f"{what}.health.port: {check.port} is not the exposed port {expose.port}; "
                                      "the router checks the port it sends requests to")
        kwargs["health"] = BAD
    if image is None or not hosts_ok or any(v is BAD for v in kwargs.values()):
        return ParsedService(name, None, hosts, tuple(ports), tuple(depends), expose_node)
    service = model.Service(
        name=name,
        image=image,
        hosts=hosts,
        env=tuple(sorted((k, v) for k, (_, v) in env.items())),
        ports=tuple(p for p, _ in ports),
        depends_on=tuple(sorted({n for n, _ in depends})),
        secrets=tuple(sorted(secrets)),
        **kwargs,
    )
    return ParsedService(name, service, hosts, tuple(ports), tuple(depends), expose_node)


def _resources(node: Node, problems: Problems, what: str) -> model.Resources:
    fields = mapping(node, ("memory", "cpus"), problems, what)
    if fields is BAD:
        return BAD
    memory = string(fields["memory"], problems, f"{what}.memory", MEMORY_RE, "write it like 256m or 1g") if "memory" in fields else None
    cpus = number(fields["cpus"], problems, f"{what}.cpus", strict=True) if "cpus" in fields else None
    return BAD if BAD in (memory, cpus) else model.Resources(memory, cpus)


def _rollout(node: Node, problems: Problems, what: str, exposed: bool = False) -> model.Rollout:
    fields = mapping(node, ("batch_size", "strategy", *schema_canary.KEYS), problems, what)
    if fields is BAD:
        return BAD
    values = {
        "batch_size": integer(fields["batch_size"], problems, f"{what}.batch_size", 1) if "batch_size" in fields else 1,
        "strategy": choice(fields["strategy"], problems, f"{what}.strategy",
                           ("auto", "start-first", "stop-first", "blue-green", "canary"))
        if "strategy" in fields
        else "auto",
    }
    strategy = values["strategy"]
    if exposed and strategy in ("start-first", "stop-first"):
        problems.at(fields["strategy"], f"{what}.strategy: an exposed service is switched blue-green by its router; "
                                        f"use blue-green, canary or auto, or remove 'expose'")
        values["strategy"] = BAD
    elif not exposed and strategy in ("blue-green", "canary"):
        problems.at(fields["strategy"], f"{what}.strategy: {strategy} needs 'expose' (how the router reaches the service)")
        values["strategy"] = BAD
    values.update(schema_canary.parse(fields, problems, what, strategy=values["strategy"], exposed=exposed))
    return BAD if BAD in values.values() else model.Rollout(**values)


def _health(node: Node | None, problems: Problems, what: str, ports: list[model.PortMapping]) -> model.HealthCheck:
    """``type`` picks the check; the port defaults to the first published container port."""
    if node is None:
        return model.HealthCheck()
    fields = mapping(node, HEALTH_KEYS, problems, what)
    if fields is BAD:
        return BAD
    kind = choice(fields["type"], problems, f"{what}.type", tuple(_HEALTH_KIND_KEYS)) if "type" in fields else "running"
    if kind is BAD:
        return BAD
    for key in sorted(set(fields) & ({"port", "path", "status", "body_contains", "command"} - _HEALTH_KIND_KEYS[kind])):
        problems.at(node.keys[key], f"{what}: {key!r} does not apply to type {kind}")
    values: dict = {"kind": kind}
    timing = {"interval": True, "timeout": True, "start_period": False, "deadline": True}
    for key, positive in timing.items():
        if key in fields:
            values[key] = duration(fields[key], problems, f"{what}.{key}", positive=positive)
    if "successes" in fields:
        values["successes"] = integer(fields["successes"], problems, f"{what}.successes", 1)
    if kind in ("http", "tcp"):
        if "port" in fields:
            values["port"] = integer(fields["port"], problems, f"{what}.port", 1, 65535)
        elif ports:
            values["port"] = ports[0].container_port
        else:
            problems.at(node, f"{what}: type {kind} needs 'port' (the container port) when the service publishes none")
            values["port"] = BAD
    if kind == "http":
        if "path" in fields:
            values["path"] = string(fields["path"], problems, f"{what}.path")
            if values["path"] is not BAD and not values["path"].startswith("/"):
                problems.at(fields["path"], f"{what}.path: must start with '/', got {values['path']!r}")
                values["path"] = BAD
        if "status" in fields:
            values["expected_status"] = integer(fields["status"], problems, f"{what}.status", 100, 599)
        if "body_contains" in fields:
            values["body_contains"] = string(fields["body_contains"], problems, f"{what}.body_contains")
    if kind == "command":
        if "command" not in fields:
            problems.at(node, f"{what}: type command needs 'command'")
            return BAD
        values["command"] = argv(fields["command"], problems, f"{what}.command")
    return BAD if BAD in values.values() else model.HealthCheck(**values)


def _migrations(node: Node, problems: Problems, what: str) -> model.Migrations:
    fields = mapping(node, ("path", "command", "allow_contract", "soak"), problems, what)
    if fields is BAD:
        return BAD
    if "path" not in fields and "command" not in fields:
        problems.at(node, f"{what}: give 'path' (a directory in the image) or 'command'")
        return BAD
    values = {
        "path": string(fields["path"], problems, f"{what}.path") if "path" in fields else None,
        "command": argv(fields["command"], problems, f"{what}.command") if "command" in fields else (),
        "allow_contract": boolean(fields["allow_contract"], problems, f"{what}.allow_contract") if "allow_contract" in fields else False,
        "soak": duration(fields["soak"], problems, f"{what}.soak") if "soak" in fields else 3600.0,
    }
    return BAD if BAD in values.values() else model.Migrations(**values)
