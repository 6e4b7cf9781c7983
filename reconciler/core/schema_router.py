"""The router parts of the format: an environment's ``router:`` and a service's ``expose:``.

::

    router:                          # the HAProxy of every host that runs an exposed service
      bind: ":80"                    # its one HTTP frontend; {host} and {address} are filled in per host
      admin: 127.0.0.1:9901          # its Runtime API, on the host's loopback (reached through SSH)
      config_file: /etc/haproxy/haproxy.cfg
      reload: systemctl reload haproxy
      check: /usr/sbin/haproxy -c -q -f   # followed by a candidate config's path
      socket: /run/haproxy/admin.sock
      state_file: /var/lib/haproxy/server-state
      log: /dev/log

    router:                          # or: HAProxy as a container of a pinned image (core.router_image)
      image: registry.example.com/haproxy:2.6@sha256:...
      bind: ":80"
      admin: 127.0.0.1:9901
      config_file: /srv/router/haproxy.cfg   # its directory is mounted into the container
      state_file: /srv/router/server-state   # (in that directory; socket too, by default admin.sock)

    services:
      web:
        expose: {hosts: [shop.example.com], path: /api, port: 8080, drain: 30s}
        # and mirror / pause / database_pause / maintenance: core.schema_traffic

A service with ``expose`` is deployed blue-green through its hosts'
routers and publishes no host port; what each host's router would serve is
checked as one site (``core.router.problems``): two services claiming the
same host name and path on one host are refused at their ``expose``.
"""

from __future__ import annotations

import posixpath
import re

from reconciler.core import model
from reconciler.core import router as rt
from reconciler.core.schema_fields import BAD, duration, integer, mapping, string, string_list
from reconciler.core.schema_traffic import TRAFFIC_KEYS, parse_traffic
from reconciler.core.schema_values import parse_image
from reconciler.core.schema_yaml import Node, Problems

ROUTER_KEYS = ("image", "bind", "admin", "config_file", "reload", "check", "socket", "state_file", "log")
EXPOSE_KEYS = ("hosts", "path", "port", "drain", *TRAFFIC_KEYS)
_ADDRESS_RE = re.compile(r"^(\{address\}|[0-9A-Za-z.:\[\]-]*):\d{1,5}$")


def parse_router(node: Node, problems: Problems, require_digest: bool = True) -> model.RouterConfig:
    fields = mapping(node, ROUTER_KEYS, problems, "router")
    if fields is BAD:
        return BAD
    values = {}
    for key in ROUTER_KEYS:
        if key in fields and key != "image":
            values[key] = string(fields[key], problems, f"router.{key}")
    if "image" in fields:
        image = parse_image(fields["image"], problems, "router.image", require_digest)
        values["image"] = BAD if image is None else image
        if image is not None:
            _image_files(fields, values, problems)
    for key in ("bind", "admin"):
        value = values.get(key)
        if value not in (None, BAD) and not _ADDRESS_RE.match(value):
            problems.at(fields[key], f"router.{key}: expected ADDRESS:PORT or :PORT, got {value!r}")
            values[key] = BAD
    if BAD in values.values():
        return BAD
    return model.RouterConfig(**values)


def _image_files(fields: dict, values: dict, problems: Problems) -> None:
    """A router run from an image: the engine reloads and checks it, and its files share one mounted directory."""
    done_by = {"reload": "reloaded by a signal to its master, through the engine",
               "check": "checked by its image's own haproxy -c, in the container"}
    for key, how in done_by.items():
        if key in fields:
            problems.at(fields[key], f"router.{key}: a router run from 'image' is {how}; drop '{key}'")
            values[key] = BAD
    config_file = values.get("config_file", model.RouterConfig.config_file)
    if config_file is BAD:
        return
    folder = posixpath.dirname(config_file)
    if not posixpath.isabs(config_file) or folder in ("", "/"):
        problems.at(fields.get("config_file", fields["image"]), "router.config_file: with 'image', an absolute path "
                    f"in a directory of its own (that directory is mounted into the container), got {config_file!r}")
        values["config_file"] = BAD
        return
    values.setdefault("socket", f"{folder}/admin.sock")
    for key in ("socket", "state_file"):
        value = values.get(key)
        if value not in (None, BAD) and posixpath.dirname(value) != folder:
            problems.at(fields[key], f"router.{key}: with 'image', it must be in {folder}/ (the config file's "
                                     f"directory, the one mounted into the container), got {value!r}")
            values[key] = BAD


def parse_expose(node: Node, problems: Problems, what: str) -> model.Expose:
    fields = mapping(node, EXPOSE_KEYS, problems, what)
    if fields is BAD:
        return BAD
    if "port" not in fields:
        problems.at(node, f"{what}: missing 'port' (the container port the router sends requests to)")
        return BAD
    port = integer(fields["port"], problems, f"{what}.port", 1, 65535)
    hostnames = string_list(fields["hosts"], problems, f"{what}.hosts") if "hosts" in fields else ()
    path = string(fields["path"], problems, f"{what}.path") if "path" in fields else None
    drain = duration(fields["drain"], problems, f"{what}.drain") if "drain" in fields else 30.0
    traffic = parse_traffic(fields, problems, what)  # mirror, pause, maintenance (core.schema_traffic)
    if BAD in (port, hostnames, path, drain, *traffic.values()):
        return BAD
    return model.Expose(port, tuple(sorted(set(hostnames))), path, drain, **traffic)


def check_routing(services, router: model.RouterConfig | None, hosts: tuple[model.Host, ...], problems: Problems) -> None:
    """Every exposed service needs the environment's router; each host's site must be unambiguous.

    ``services``: the parsed services (``schema_service.ParsedService``);
    a problem of a host's site is reported at the ``expose`` of the first
    service it names, once for all the hosts it concerns.
    """
    exposed = [p for p in services if p.expose_node is not None]
    if not exposed:
        return
    if router is None:
        for parsed in exposed:
            problems.at(parsed.expose_node, f"services.{parsed.name}.expose: the environment declares no "
                                            "'router' (the HAProxy its hosts serve HTTP with)")
        return
    if router is BAD:
        return
    by_name = {h.name: h for h in hosts}
    found: dict[tuple[Node, str], list[str]] = {}
    for host in sorted(by_name):
        here = [p for p in exposed if p.service is not None and host in p.service.hosts]
        if not here:
            continue
        site = rt.Site(rt.settings_for(router, by_name[host]), tuple(rt.exposure_of(p.service) for p in here))
        for message in rt.problems(site):
            named = next((p for p in here if f" {p.name} " in f" {message} ".replace(":", " ").replace("'", " ")),
                         here[0])
            found.setdefault((named.expose_node, message), []).append(host)
    for (node, message), on in found.items():
        problems.at(node, f"router on {', '.join(on)}: {message}")
