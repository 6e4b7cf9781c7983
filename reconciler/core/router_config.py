"""A host's router config file (HAProxy 2.6), rendered from its ``Site``.  Pure.

``render_config(site, servers)`` turns the desired exposure of the host's
services (one frontend port, host-name and/or path rules, one backend per
service, the QA backends of canaries) and the servers the router runs right
now into HAProxy's config text, so that a restart of HAProxy restores the
live routing.  ``skeleton_hash`` digests everything but the servers: when it
changes, the router must reload (a backend or a rule cannot be added over
the Runtime API); servers change without one.  The data it renders is in
``core.router``; the traffic controls' lines (mirror, hold, maintenance) in
``core.traffic``.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

from reconciler.core import traffic
from reconciler.core.router import UNROUTED_BACKEND, Exposure, Server, Site, _duration, _normal_path, problems, server_options


def _specificity(e: Exposure) -> tuple:
    # HAProxy takes the first matching use_backend: host and path before
    # host alone before path alone, longer paths first.
    path = _normal_path(e.path)
    return (not (e.hostnames and path), not e.hostnames, -len(path or ""), e.service)


def skeleton_hash(site: Site) -> str:
    """A digest of everything in the config but the servers.

    When it changes the running HAProxy must reload (a backend or a rule
    cannot be added over the Runtime API); servers change without one.
    """
    return "sha256:" + hashlib.sha256(render_config(site, {}, _with_hash=False).encode()).hexdigest()[:16]


def hash_in(config_text: str) -> str | None:
    """The skeleton hash a rendered config file carries in its header; None for a foreign file."""
    for line in config_text.splitlines()[:5]:
        if line.startswith("# skeleton: "):
            return line.split(": ", 1)[1].strip()
    return None


def render_config(site: Site, servers: Mapping[str, Sequence[Server]], *, _with_hash: bool = True) -> str:
    """HAProxy's config for ``site`` with ``servers`` (backend -> servers) in their current state.

    Raises ValueError on a site ``problems`` rejects: the desired state's
    validation reports those, with file and line, before anything renders.
    """
    found = problems(site)
    if found:
        raise ValueError("; ".join(found))
    s = site.settings
    lines = ["# Written by reconciler: this host's routing, rewritten after every router change."]
    if _with_hash:
        lines.append(f"# skeleton: {skeleton_hash(site)}")
    lines += ["global", f"    stats socket ipv4@{s.admin} level admin"]
    if s.socket:
        lines.append(f"    stats socket {s.socket} mode 600 level admin expose-fd listeners")
    if s.state_file:
        lines.append(f"    server-state-file {s.state_file}")
    lines += traffic.global_lines(s)
    if s.log:
        lines.append(f"    log {s.log} format raw daemon notice" if s.log in ("stdout", "stderr")
                     else f"    log {s.log} daemon notice")
    lines += ["", "defaults", "    mode http", "    log global", "    option dontlognull",
              f"    timeout connect {_duration(s.timeout_connect)}",
              f"    timeout client {_duration(s.timeout_client)}",
              f"    timeout server {_duration(s.timeout_server)}",
              # A connection refused by a dying server is retried on another one.
              "    retries 3", "    option redispatch 1"]
    if s.state_file:
        lines.append("    load-server-state-from-file global")
    lines += ["", "frontend http", f"    bind {s.bind}"]
    ordered = sorted(site.exposures, key=_specificity)
    default = None
    for e in ordered:
        conditions = []
        if e.hostnames:
            lines.append(f"    acl host_{e.service} hdr(host),field(1,:) -i {' '.join(e.hostnames)}")
            conditions.append(f"host_{e.service}")
        path = _normal_path(e.path)
        if path:
            lines.append(f"    acl path_{e.service} path {path}")
            lines.append(f"    acl path_{e.service} path_beg {path}/")
            conditions.append(f"path_{e.service}")
        if e.qa_backend:  # QA requests to the candidate, while the QA backend has one UP
            qa = f"qa_{e.service}"
            if e.qa_header:
                lines.append(f"    acl {qa} req.hdr({e.qa_header}) -m found")
            if e.qa_cookie:
                lines.append(f"    acl {qa} req.cook({e.qa_cookie}) -m found")
            lines.append(f"    use_backend {e.qa_backend} if {' '.join([*conditions, qa])} "
                         f"{{ nbsrv({e.qa_backend}) gt 0 }}")
        if conditions:
            lines.append(f"    use_backend {e.service} if {' '.join(conditions)}")
        else:
            default = e.service
    lines.append(f"    default_backend {default or UNROUTED_BACKEND}")
    lines += ["", f"backend {UNROUTED_BACKEND}",
              '    http-request return status 404 content-type text/plain string "no service for this host and path"']
    named = [(e.service, e) for e in site.exposures] + [(e.qa_backend, e) for e in site.exposures if e.qa_backend]
    for name, e in sorted(named, key=lambda x: x[0]):
        lines += ["", f"backend {name}", "    balance roundrobin", f"    timeout check {_duration(e.check.timeout)}"]
        if e.sticky and name == e.service:
            # Runtime-added servers take no ``cookie`` value (HAProxy 2.6); a
            # dynamic cookie (from the server's address) works for them.
            lines += [f"    cookie {e.sticky} insert indirect nocache dynamic",
                      f"    dynamic-cookie-key reconciler-{e.service}"]
        if e.check.kind == "http":
            lines += [f"    option httpchk GET {e.check.path}", f"    http-check expect status {e.check.expected_status}"]
            if e.check.body_contains is not None:
                lines.append(f'    http-check expect string "{e.check.body_contains}"')
        if name == e.service:
            lines += traffic.backend_lines(s, e)
        for server in sorted(servers.get(name, ()), key=lambda x: x.name):
            weight = 0 if server.state == "drain" else server.weight
            disabled = " disabled" if server.state == "maint" else ""
            lines.append(f"    server {server.name} {server.address}:{server.port} "
                         f"{server_options(e.check, weight, server.backup)}{disabled}")
    return "\n".join(lines) + "\n"
