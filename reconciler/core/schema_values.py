"""Service values: image, hosts, ports, volumes, env, secrets, labels.

Checks that need only the value itself live here (types, the image pin,
plain-text secrets, reserved labels); checks across services (ports,
dependencies) live in ``schema``.
"""

from __future__ import annotations

import base64
import re

from reconciler.core import model
from reconciler.core import managed
from reconciler.core.secret_rule import looks_like_plain_secret  # noqa: F401  (the validator's rule; plan masks by it too)
from reconciler.core.schema_fields import (
    BAD,
    boolean,
    choice,
    integer,
    items,
    mapping,
    string,
    string_list,
    string_map,
    suggestion,
)
from reconciler.core.schema_yaml import Node, Problems, describe

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MEMORY_RE = re.compile(r"^\d+(\.\d+)?[bkmgBKMG]?$")
RESTART_RE = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
_PORT_RE = re.compile(r"^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):)?(?P<host>\d+):(?P<container>\d+)(?:/(?P<proto>tcp|udp))?$")
def parse_image(node: Node, problems: Problems, what: str, require_digest: bool) -> model.ImageRef | None:
    text = string(node, problems, what)
    if text is BAD:
        return None
    try:
        image = model.ImageRef.parse(text)
    except ValueError as exc:
        problems.at(node, f"{what}: {exc}")
        return None
    if require_digest and not image.pinned:
        shown = f"{image.repository}:{image.tag or 'TAG'}@sha256:<64 hex digits>"
        problems.at(node, f"{what}: {text!r} is not pinned to a digest and policy.require_digest is true; write it as {shown}")
    return image


def resolve_hosts(node: Node, problems: Problems, what: str, hosts: tuple[str, ...], groups: dict[str, tuple[str, ...]]) -> tuple[tuple[str, ...], bool]:
    """Host names and groups (or ``all``) -> (sorted host names, all known).

    The names that did resolve are returned even when others did not, so a
    port clash on them is still found.
    """
    if node.value == "all":
        return tuple(sorted(hosts)), True
    names = string_list(node, problems, what) if not isinstance(node.value, str) else (node.value,)
    if names is BAD:
        return (), False
    resolved: set[str] = set()
    ok = True
    entries = node.value if isinstance(node.value, list) else [node]
    for name, item in zip(names, entries):
        if name == "all":
            resolved.update(hosts)
        elif name in hosts:
            resolved.add(name)
        elif name in groups:
            resolved.update(groups[name])
        else:
            ok = False
            problems.at(item, f"{what}: unknown host or group {name!r}{suggestion(name, [*hosts, *groups, 'all'])}")
    if ok and not resolved:
        problems.at(node, f"{what}: names no host")
        ok = False
    return tuple(sorted(resolved)), ok


def parse_ports(node: Node, problems: Problems, what: str) -> list[tuple[model.PortMapping, Node]]:
    out: list[tuple[model.PortMapping, Node]] = []
    entries = items(node, problems, what)
    for i, item in enumerate(entries or []):
        port = _port(item, problems, f"{what}[{i}]")
        if port is not None:
            out.append((port, item))
    return out


def _port(item: Node, problems: Problems, what: str) -> model.PortMapping | None:
    if isinstance(item.value, str):
        match = _PORT_RE.match(item.value)
        if not match:
            problems.at(item, f'{what}: expected "HOST:CONTAINER", "IP:HOST:CONTAINER/udp" or a mapping, got {item.value!r}')
            return None
        host_port, container_port = int(match["host"]), int(match["container"])
        protocol, host_ip = match["proto"] or "tcp", (match["ip"] or "").strip("[]")
    elif item.is_mapping:
        fields = mapping(item, ("published", "target", "protocol", "host_ip"), problems, what)
        if fields is BAD:
            return None
        for required in ("published", "target"):
            if required not in fields:
                problems.at(item, f"{what}: missing {required!r} (the host port is 'published', the container port 'target')")
                return None
        host_port = integer(fields["published"], problems, f"{what}.published", 1, 65535)
        container_port = integer(fields["target"], problems, f"{what}.target", 1, 65535)
        protocol = choice(fields["protocol"], problems, f"{what}.protocol", ("tcp", "udp")) if "protocol" in fields else "tcp"
        host_ip = string(fields["host_ip"], problems, f"{what}.host_ip") if "host_ip" in fields else ""
        if BAD in (host_port, container_port, protocol, host_ip):
            return None
    else:
        problems.at(item, f'{what}: expected "HOST:CONTAINER" or a mapping, got {describe(item)}; quote it: "8080:80"')
        return None
    for label, port in (("host port", host_port), ("container port", container_port)):
        if not 1 <= port <= 65535:
            problems.at(item, f"{what}: {label} {port} is not between 1 and 65535")
            return None
    return model.PortMapping(host_port, container_port, protocol, host_ip)


def parse_volumes(node: Node, problems: Problems, what: str) -> tuple[model.VolumeMount, ...]:
    out = []
    for i, item in enumerate(items(node, problems, what) or []):
        where = f"{what}[{i}]"
        if isinstance(item.value, str):
            parts = item.value.split(":")
            if len(parts) not in (2, 3) or not all(parts[:2]) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                problems.at(item, f'{where}: expected "SOURCE:TARGET[:ro]", got {item.value!r}')
                continue
            out.append(model.VolumeMount(parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"))
            continue
        fields = mapping(item, ("source", "target", "read_only"), problems, where)
        if fields is BAD:
            continue
        if "source" not in fields or "target" not in fields:
            problems.at(item, f"{where}: needs both 'source' and 'target'")
            continue
        source, target = string(fields["source"], problems, f"{where}.source"), string(fields["target"], problems, f"{where}.target")
        read_only = boolean(fields["read_only"], problems, f"{where}.read_only") if "read_only" in fields else False
        if BAD not in (source, target, read_only):
            out.append(model.VolumeMount(source, target, read_only))
    return tuple(out)


def parse_env(node: Node, problems: Problems, what: str) -> dict[str, tuple[Node, str]]:
    """``KEY: value`` mapping or compose's ``- KEY=value`` list; values must be strings.

    Numbers and booleans are refused rather than coerced: YAML reads ``1.10``
    as 1.1 and ``0755`` as 755, and the container would see what nobody wrote.
    """
    if isinstance(node.value, list):
        out: dict[str, tuple[Node, str]] = {}
        for i, item in enumerate(node.value):
            text = string(item, problems, f"{what}[{i}]")
            if text is BAD:
                continue
            key, sep, value = text.partition("=")
            if not sep:
                problems.at(item, f"{what}[{i}]: expected KEY=value, got {text!r}")
            elif key in out:
                problems.at(item, f"{what}: duplicate variable {key!r}")
            else:
                out[key] = (item, value)
        entries = out
    else:
        entries = string_map(node, problems, what)
        if entries is BAD:
            return {}
    for key, (key_node, value) in entries.items():
        if not ENV_NAME_RE.match(key):
            problems.at(key_node, f"{what}: invalid variable name {key!r}")
        elif looks_like_plain_secret(key, value):
            problems.at(
                key_node,
                f"{what}.{key}: looks like a plain-text secret; reference it instead: "
                f"secrets: [{{name: {key.lower().replace('_', '-')}, env: {key}, file: /etc/reconciler/secrets/...}}]",
            )
    return entries


SECRET_KEYS = ("name", "env", "file", "encrypted", "as")
AGE_ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
AGE_ARMOR_END = "-----END AGE ENCRYPTED FILE-----"
_AGE_MAGIC = b"age-encryption.org/v1\n"
_BASE64_LINE_RE = re.compile(r"^[A-Za-z0-9+/]{1,64}={0,2}$")


def age_armor_problem(text: str) -> str | None:
    """Why ``text`` is not an armored age file (``age -a``, pyrage's
    ``armored=True``); None when it is one.  Only the form is checked here:
    whether the agent's key opens it is known at deploy time."""
    lines = text.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != AGE_ARMOR_BEGIN or lines[-1].strip() != AGE_ARMOR_END:
        return (f"expected an armored age ciphertext ({AGE_ARMOR_BEGIN} ... {AGE_ARMOR_END}); "
                "write it with `reconciler secret set ENV NAME` (or `age -a -R environments/ENV/age-recipients`)")
    body = [line.strip() for line in lines[1:-1]]
    if not all(_BASE64_LINE_RE.match(line) for line in body):
        return "the armored age ciphertext has a line that is not base64 (was it re-wrapped or cut?)"
    try:
        head = base64.b64decode("".join(body)[:64] + "=" * (-len("".join(body)[:64]) % 4))
    except ValueError:
        return "the armored age ciphertext does not decode as base64"
    if not head.startswith(_AGE_MAGIC):
        return "the armored block is not an age file (no age-encryption.org/v1 header)"
    return None


def parse_secrets(node: Node, problems: Problems, what: str) -> tuple[model.SecretRef, ...]:
    """``{name, env?, file | encrypted, as?}`` per secret.

    ``as: env`` (the default) puts the value in ``env`` (default: the name in
    upper case); ``as: file`` puts it in ``/run/secrets/<name>`` and ``env``,
    when given, names a variable holding that path.
    """
    out: list[model.SecretRef] = []
    plain = "a secret never holds its value in the repository; give file: (a path on the host) or encrypted:"
    variables: dict[str, str] = {}
    for i, item in enumerate(items(node, problems, what) or []):
        where = f"{what}[{i}]"
        fields = mapping(item, SECRET_KEYS, problems, where, special={"value": f"{where}.value: {plain}"})
        if fields is BAD or "value" in item.keys:
            continue
        if "name" not in fields:
            problems.at(item, f"{where}: missing 'name'")
            continue
        name = string(fields["name"], problems, f"{where}.name", NAME_RE, "use lowercase letters, digits and '-'")
        delivery = choice(fields["as"], problems, f"{where}.as", ("env", "file")) if "as" in fields else "env"
        if "env" in fields:
            env = string(fields["env"], problems, f"{where}.env", ENV_NAME_RE)
        elif delivery == "file" or delivery is BAD:
            env = None
        else:
            env = name.upper().replace("-", "_") if name is not BAD else BAD
        sources = [k for k in ("file", "encrypted") if k in fields]
        if len(sources) != 1:
            problems.at(item, f"{where}: give exactly one of 'file' (a path on the host) or 'encrypted'")
            continue
        value = string(fields[sources[0]], problems, f"{where}.{sources[0]}")
        if sources[0] == "file" and value is not BAD and not value.startswith("/"):
            problems.at(fields["file"], f"{where}.file: must be an absolute path on the host, got {value!r}")
            value = BAD
        if sources[0] == "encrypted" and value is not BAD:
            refusal = age_armor_problem(value)
            if refusal:
                problems.at(fields["encrypted"], f"{where}.encrypted: {refusal}")
                value = BAD
        if BAD in (name, env, value, delivery):
            continue
        if any(s.name == name for s in out):
            problems.at(fields["name"], f"{where}.name: duplicate secret {name!r}")
            continue
        if env is not None and env in variables:
            problems.at(fields.get("env", item), f"{where}: variable {env!r} is already set by secret {variables[env]!r}")
            continue
        if env is not None:
            variables[env] = name
        if sources[0] == "encrypted":
            value = value.strip() + "\n"  # the armor as age writes it, however the YAML block ended
        out.append(model.SecretRef(name, env, delivery=delivery, **{sources[0]: value}))
    return tuple(out)


def parse_labels(node: Node, problems: Problems, what: str) -> tuple[tuple[str, str], ...]:
    entries = string_map(node, problems, what)
    if entries is BAD:
        return ()
    out = []
    for key, (key_node, value) in sorted(entries.items()):
        if key.startswith(managed.LABEL_PREFIX):
            problems.at(key_node, f"{what}: label {key!r} is reserved: keys starting with {managed.LABEL_PREFIX!r} are set by reconciler")
        else:
            out.append((key, value))
    return tuple(out)
