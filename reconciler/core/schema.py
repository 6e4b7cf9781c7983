"""The environment repository format: snapshot -> ``model.Environment``.

Pure: no git, no files, no network; it reads a ``Snapshot`` (see
``reconciler.adapters.source`` for the adapters that build one).  Every problem is
reported at once, sorted, as ``path:line:col: message``.

Layout (the format is documented in desired-state/README.md)::

    reconciler.yaml                        optional: version, defaults (policy, service)
    environments/<env>/environment.yaml    hosts, policy, database, services, known_hosts
    environments/<env>/services/<svc>.yaml optional: one service per file (name = file name)
    environments/<env>/known_hosts         pinned SSH host keys
"""

from __future__ import annotations

import posixpath
import re

from reconciler.core import model
from reconciler.errors import InvalidDesiredState
from reconciler.core.schema_fields import BAD, boolean, choice, duration, integer, mapping, string, string_list, suggestion
from reconciler.core.schema_router import check_routing, parse_router
from reconciler.core.schema_service import DEFAULTABLE_SERVICE_KEYS, MERGED_KEYS, HostIndex, ParsedService, parse_service
from reconciler.core.schema_yaml import MAX_FILE_BYTES, Node, Problem, Problems, Snapshot, check_repo_path, exists, parse_yaml, read_file, resolve_path

__all__ = ["MAX_FILE_BYTES", "Problem", "Snapshot", "list_environments", "load_environment", "policy_of", "validate", "ROOT_FILE"]

ROOT_FILE = "reconciler.yaml"
ENVIRONMENTS = "environments"
ENVIRONMENT_KEYS = ("hosts", "policy", "database", "services", "known_hosts", "router")
POLICY_KEYS = ("require_digest", "prune", "drift", "keep_retired", "parallel_hosts", "on_failure", "drift_interval", "require_signed")
DATABASE_KEYS = ("kind", "dsn_file", "via_host", "name", "backup")
HOST_KEYS = ("address", "user", "port", "groups", "docker_socket")
# An absolute path that fits a Unix socket address (108 bytes with its NUL).
_SOCKET_PATH_RE = re.compile(r"^/[^\x00]{0,106}$")
_ENV_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def list_environments(snapshot: Snapshot) -> tuple[str, ...]:
    """Names of the environments: directories holding an environment.yaml."""
    names = set()
    for path in snapshot.paths():
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == ENVIRONMENTS and parts[2] == "environment.yaml":
            names.add(parts[1])
    return tuple(sorted(names))


def load_environment(snapshot: Snapshot, name: str) -> model.Environment:
    """The resolved environment, or InvalidDesiredState listing every problem."""
    environment, problems = _load(snapshot, name)
    if problems or environment is None:
        raise InvalidDesiredState(problems.formatted() or [f"{ENVIRONMENTS}/{name}:1:1: invalid environment"])
    return environment


def policy_of(snapshot: Snapshot, name: str) -> model.Policy:
    """The environment's policy as far as it can be read, whatever else is
    wrong with the environment (the model's defaults where it cannot).

    For the signature checks, which must honour ``require_signed`` of a
    commit already in the repository even when that commit does not
    validate as a whole; never use it to deploy."""
    problems = Problems()
    defaults = _root_defaults(snapshot, problems)
    root = _yaml(snapshot, f"{ENVIRONMENTS}/{name}/environment.yaml", problems)
    own = None
    if root is not None and root.is_mapping:
        own = root.value.get("policy")
    return _policy(defaults.get("policy"), own, problems)


def validate(snapshot: Snapshot, env: str | None = None) -> list[str]:
    """Every problem of one environment (or of all), sorted; empty when valid."""
    problems = Problems()
    for path in snapshot.paths():
        if check_repo_path(path) or path != posixpath.normpath(path):
            problems.add(path, 1, 1, "path leaves the repository")
    names = list_environments(snapshot)
    if env is not None and env not in names:
        problems.add(f"{ENVIRONMENTS}/{env}/environment.yaml", 1, 1, f"no environment {env!r}{suggestion(env, names)}")
        return problems.formatted()
    if not names:
        problems.add(f"{ENVIRONMENTS}/", 1, 1, "no environments found: expected environments/<name>/environment.yaml")
    for name in [env] if env is not None else names:
        problems.merge(_load(snapshot, name)[1])
    return problems.formatted()


# ---------------------------------------------------------------- loading


def _load(snapshot: Snapshot, name: str) -> tuple[model.Environment | None, Problems]:
    problems = Problems()
    base = f"{ENVIRONMENTS}/{name}"
    env_file = f"{base}/environment.yaml"
    if not _ENV_NAME_RE.match(name):
        problems.add(env_file, 1, 1, f"environment name {name!r}: use lowercase letters, digits and '-' (it names containers)")
    for path in snapshot.paths():
        if path == ROOT_FILE or path.startswith(base + "/"):
            refusal = resolve_path(snapshot, path)[1]
            if refusal:
                problems.add(path, 1, 1, refusal)
    defaults = _root_defaults(snapshot, problems)
    root = _yaml(snapshot, env_file, problems)
    if root is None:
        return None, problems
    if root.value is None:
        problems.at(root, "environment file is empty: it needs at least 'hosts' and 'services'")
        return None, problems
    fields = mapping(root, ENVIRONMENT_KEYS, problems, "environment")
    if fields is BAD:
        return None, problems
    if "hosts" not in fields:
        problems.at(root, "environment: missing 'hosts'")
    hosts = _hosts(fields["hosts"], problems) if "hosts" in fields else ()
    index = HostIndex(tuple(h.name for h in hosts), _groups(hosts))
    for group in sorted(set(index.groups) & set(index.hosts)):
        problems.at(fields["hosts"], f"hosts: group {group!r} has the same name as a host; rename one")
    policy = _policy(defaults.get("policy"), fields.get("policy"), problems)
    database = _database(fields["database"], problems, index.hosts) if "database" in fields else None
    router = parse_router(fields["router"], problems, policy.require_digest) if "router" in fields else None
    known_hosts = _known_hosts(snapshot, base, fields.get("known_hosts"), env_file, problems)
    services = _services(snapshot, base, fields.get("services"), defaults.get("service"), problems, index, policy.require_digest)
    _check_ports(services, problems)
    check_routing(services, router, hosts, problems)
    _check_dependencies(services, problems)
    if problems or BAD in (database, known_hosts, router):
        return None, problems
    environment = model.Environment(
        name=name,
        hosts=tuple(sorted(hosts, key=lambda h: h.name)),
        services=tuple(sorted((p.service for p in services if p.service), key=lambda s: s.name)),
        policy=policy,
        database=database,
        known_hosts=known_hosts,
        router=router,
    )
    return environment, problems


def _yaml(snapshot: Snapshot, path: str, problems: Problems) -> Node | None:
    data = read_file(snapshot, path, problems)
    return None if data is None else parse_yaml(path, data, problems)


def _root_defaults(snapshot: Snapshot, problems: Problems) -> dict[str, Node]:
    if not exists(snapshot, ROOT_FILE):
        return {}
    root = _yaml(snapshot, ROOT_FILE, problems)
    if root is None or root.value is None:
        return {}
    fields = mapping(root, ("version", "defaults"), problems, ROOT_FILE)
    if fields is BAD:
        return {}
    if "version" in fields and integer(fields["version"], problems, "version", 1, 1) is BAD:
        return {}
    if "defaults" not in fields:
        return {}
    defaults = mapping(fields["defaults"], ("policy", "service"), problems, "defaults")
    if defaults is BAD:
        return {}
    if "service" in defaults and mapping(defaults["service"], DEFAULTABLE_SERVICE_KEYS, problems, "defaults.service") is BAD:
        del defaults["service"]
    return defaults


def _hosts(node: Node, problems: Problems) -> tuple[model.Host, ...]:
    """``name: {address, user, port, groups}`` or the shorthand ``name: address``."""
    if not node.is_mapping:
        problems.at(node, "hosts: expected a mapping of host name -> address or settings")
        return ()
    out = []
    for name, value in node.value.items():
        what = f"hosts.{name}"
        if not _HOST_NAME_RE.match(name) or name == "all":
            problems.at(node.keys[name], f"{what}: invalid host name {name!r} ('all' is reserved)")
            continue
        if isinstance(value.value, str):
            out.append(model.Host(name, value.value))
            continue
        fields = mapping(value, HOST_KEYS, problems, what)
        if fields is BAD:
            continue
        if "address" not in fields:
            problems.at(node.keys[name], f"{what}: missing 'address'")
            continue
        values = {
            "address": string(fields["address"], problems, f"{what}.address"),
            "user": string(fields["user"], problems, f"{what}.user") if "user" in fields else "root",
            "port": integer(fields["port"], problems, f"{what}.port", 1, 65535) if "port" in fields else 22,
            "groups": string_list(fields["groups"], problems, f"{what}.groups", _HOST_NAME_RE) if "groups" in fields else (),
            "docker_socket": string(fields["docker_socket"], problems, f"{what}.docker_socket", _SOCKET_PATH_RE,
                                    "an absolute path of at most 107 characters, e.g. /run/user/1000/docker.sock")
            if "docker_socket" in fields else None,
        }
        if BAD not in values.values():
            values["groups"] = tuple(sorted(set(values["groups"])))
            out.append(model.Host(name, **values))
    if not node.value:
        problems.at(node, "hosts: an environment needs at least one host")
    return tuple(out)


def _groups(hosts: tuple[model.Host, ...]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for host in hosts:
        for group in host.groups:
            groups.setdefault(group, []).append(host.name)
    return {g: tuple(sorted(members)) for g, members in groups.items()}


def _policy(default: Node | None, own: Node | None, problems: Problems) -> model.Policy:
    """Model defaults, then reconciler.yaml's defaults.policy, then the environment's policy."""
    fields: dict[str, Node] = {}
    for node, what in ((default, "defaults.policy"), (own, "policy")):
        if node is not None:
            found = mapping(node, POLICY_KEYS, problems, what)
            fields.update(found if found is not BAD else {})
    readers = {
        "require_digest": lambda n: boolean(n, problems, "policy.require_digest"),
        "prune": lambda n: boolean(n, problems, "policy.prune"),
        "drift": lambda n: choice(n, problems, "policy.drift", ("report", "heal")),
        "keep_retired": lambda n: integer(n, problems, "policy.keep_retired", 0),
        "parallel_hosts": lambda n: integer(n, problems, "policy.parallel_hosts", 1),
        "on_failure": lambda n: choice(n, problems, "policy.on_failure", ("revert", "note")),
        "drift_interval": lambda n: duration(n, problems, "policy.drift_interval", positive=True),
        "require_signed": lambda n: boolean(n, problems, "policy.require_signed"),
    }
    values = {key: readers[key](node) for key, node in fields.items()}
    return model.Policy(**{k: v for k, v in values.items() if v is not BAD})


def _database(node: Node, problems: Problems, hosts: tuple[str, ...]) -> model.Database:
    fields = mapping(node, DATABASE_KEYS, problems, "database")
    if fields is BAD:
        return BAD
    values = {
        "kind": choice(fields["kind"], problems, "database.kind", ("postgresql",)) if "kind" in fields else "postgresql",
        "dsn_file": string(fields["dsn_file"], problems, "database.dsn_file") if "dsn_file" in fields else None,
        "via_host": string(fields["via_host"], problems, "database.via_host") if "via_host" in fields else None,
        "name": string(fields["name"], problems, "database.name") if "name" in fields else None,
        "backup": choice(fields["backup"], problems, "database.backup", ("always", "when-migrating")) if "backup" in fields else "always",
    }
    via = values["via_host"]
    if via not in (None, BAD) and via not in hosts:
        problems.at(fields["via_host"], f"database.via_host: unknown host {via!r}{suggestion(via, hosts)}")
        return BAD
    return BAD if BAD in values.values() else model.Database(**values)


def _known_hosts(snapshot: Snapshot, base: str, node: Node | None, env_file: str, problems: Problems) -> str:
    written = "known_hosts"
    if node is not None:
        written = string(node, problems, "known_hosts")
        if written is BAD:
            return BAD
    refusal = check_repo_path(written)
    path = posixpath.normpath(posixpath.join(base, written))
    if refusal is None and (path == ".." or path.startswith("../")):
        refusal = f"path {written!r} leaves the repository"
    if refusal:
        problems.add(env_file, node.line if node else 1, node.col if node else 1, f"known_hosts: {refusal}")
        return BAD
    if not exists(snapshot, path):
        problems.add(env_file, node.line if node else 1, node.col if node else 1, f"known_hosts: {path} is missing; pin the hosts' keys there")
        return BAD
    read_file(snapshot, path, problems)
    return path


def _services(
    snapshot: Snapshot, base: str, inline: Node | None, default: Node | None, problems: Problems, index: HostIndex, require_digest: bool
) -> list[ParsedService]:
    """Services written inline under ``services:`` and in ``services/<name>.yaml``."""
    entries: list[tuple[str, Node, Node]] = []
    if inline is not None:
        if inline.is_mapping:
            entries += [(name, inline.keys[name], node) for name, node in inline.value.items()]
        else:
            problems.at(inline, "services: expected a mapping of service name -> settings")
    prefix = f"{base}/services/"
    for path in snapshot.paths():
        if path.startswith(prefix) and "/" not in path[len(prefix) :] and path.endswith((".yaml", ".yml")):
            node = _yaml(snapshot, path, problems)
            if node is not None:
                entries.append((posixpath.splitext(path[len(prefix) :])[0], Node(None, path, 1, 1), node))
    seen: dict[str, Node] = {}
    parsed = []
    for name, name_node, node in entries:
        if name in seen:
            first = seen[name]
            problems.at(name_node, f"services.{name}: defined twice (also at {first.path}:{first.line})")
            continue
        seen[name] = name_node
        parsed.append(parse_service(name, name_node, _with_defaults(node, default), problems, index, require_digest))
    return parsed


def _with_defaults(node: Node, default: Node | None) -> Node:
    """The service's mapping with reconciler.yaml's defaults filled in.

    Default values keep their own location, so a bad default is reported in
    reconciler.yaml, where it must be fixed.
    """
    if default is None or not node.is_mapping or not default.is_mapping:
        return node
    values, keys = dict(node.value), dict(node.keys)
    for key in DEFAULTABLE_SERVICE_KEYS:
        if key not in default.value:
            continue
        mine, theirs = values.get(key), default.value[key]
        if mine is None:
            values[key], keys[key] = theirs, default.keys[key]
        elif key in MERGED_KEYS and mine.is_mapping and theirs.is_mapping:
            merged = {**theirs.value, **mine.value}
            merged_keys = {**theirs.keys, **mine.keys}
            values[key] = Node(merged, mine.path, mine.line, mine.col, keys=merged_keys)
    return Node(values, node.path, node.line, node.col, keys=keys, text=node.text)


def _check_ports(services: list[ParsedService], problems: Problems) -> None:
    """Two services (or one, twice) may not publish one host port on one host."""
    published: list[tuple[str, model.PortMapping, Node, set[str]]] = []
    for parsed in services:
        for port, node in parsed.ports:
            hosts = set(parsed.hosts)
            for other_name, other, other_node, other_hosts in published:
                shared = hosts & other_hosts
                same_ip = not port.host_ip or not other.host_ip or port.host_ip == other.host_ip
                if shared and same_ip and (port.host_port, port.protocol) == (other.host_port, other.protocol):
                    problems.at(
                        node,
                        f"services.{parsed.name}.ports: host port {port.host_port}/{port.protocol} is already published "
                        f"by service {other_name!r} ({other_node.path}:{other_node.line}) on {', '.join(sorted(shared))}",
                    )
            published.append((parsed.name, port, node, hosts))


def _check_dependencies(services: list[ParsedService], problems: Problems) -> None:
    known = {p.name: p for p in services}
    graph: dict[str, list[str]] = {}
    for parsed in services:
        name = parsed.name
        for target, node in parsed.depends_on:
            if target == name:
                problems.at(node, f"services.{name}.depends_on: a service cannot depend on itself")
            elif target not in known:
                problems.at(node, f"services.{name}.depends_on: unknown service {target!r}{suggestion(target, known)}")
            else:
                graph.setdefault(name, []).append(target)
    reported: set[frozenset[str]] = set()
    for start in sorted(graph):
        cycle = _find_cycle(graph, start)
        if cycle and frozenset(cycle) not in reported and cycle[0] == min(cycle[:-1]):
            reported.add(frozenset(cycle))
            node = next(n for t, n in known[start].depends_on if t == cycle[1])
            problems.at(node, f"services.{start}.depends_on: dependency cycle {' -> '.join(cycle)}")


def _find_cycle(graph: dict[str, list[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack = [(start, [start])]
    visited: set[str] = set()
    while stack:
        current, path = stack.pop()
        for target in sorted(graph.get(current, ()), reverse=True):
            if target == start:
                return path + [start]
            if target not in visited:
                visited.add(target)
                stack.append((target, path + [target]))
    return None

