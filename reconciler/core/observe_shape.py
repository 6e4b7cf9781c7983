"""The shape of an observation: what decides *how* an environment's hosts are observed.  Pure.

``plan`` and ``status`` may take their observation of the hosts from the
running agent (``agent.api``) instead of opening the hosts themselves.  The
agent observes with its own environment (the branch head it reconciles),
so its answer is only the CLI's answer if both would observe the same way:
the same hosts reached at the same address, port, user and engine socket
with the same pinned keys; the same router settings (and router image),
with the same backends on each host's router (the router's view depends on
them); and the same host-file secrets (``file:``) on the same hosts, since
their keyed digests come from the agent too.  ``shape`` writes that down as
plain JSON data; ``refusal`` says why two shapes differ (the agent answers
409 with it and the CLI observes the hosts itself).

Only the hosts and secrets the CLI's environment has are compared: a host or
a secret the agent has and the CLI does not is none of the CLI's business.
A difference anywhere else (images, env values, a new service that is not
exposed) is the *plan*, which the CLI computes from its own desired state.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from reconciler.core import router as rt
from reconciler.core import router_image
from reconciler.core.model import Environment

Shape = dict  # JSON data: lists, not tuples, so that a shape read from the wire compares equal


def _router(env: Environment) -> dict | None:
    r = env.router
    if r is None:
        return None
    return {"bind": r.bind, "admin": r.admin, "config_file": r.config_file, "reload": r.reload, "check": r.check,
            "socket": r.socket, "state_file": r.state_file, "log": r.log,
            "image": None if r.image is None else str(r.image)}


def _host(env: Environment, name: str) -> dict:
    h = env.host(name)
    site = rt.site_for(env, name)
    spec = router_image.spec_for(env, name)
    return {"address": h.address, "port": h.port, "user": h.user, "docker_socket": h.docker_socket,
            "site": None if site is None else sorted(rt.backends(site)),
            "router_image": None if spec is None else {
                "name": spec.name, "image": str(spec.image), "config_file": spec.config_file,
                "directory": spec.directory, "socket": spec.socket, "bind": spec.bind,
                "labels": [list(pair) for pair in spec.labels], "restart": spec.restart}}


def _secrets(env: Environment) -> list[dict]:
    return [{"service": s.name, "name": ref.name, "file": ref.file, "hosts": sorted(s.hosts)}
            for s in env.services for ref in s.secrets if ref.file is not None]


def pins_digest(pins: bytes) -> str:
    return "sha256:" + hashlib.sha256(pins).hexdigest()


def shape(env: Environment, pins: bytes) -> Shape:
    """``env``'s observation shape; ``pins``: the bytes of its known_hosts file."""
    return {"environment": env.name, "pins": pins_digest(pins), "router": _router(env),
            "hosts": {h.name: _host(env, h.name) for h in env.hosts}, "secrets": _secrets(env)}


def _differs(what: str, ours: Any, theirs: Any) -> str:
    return f"{what}: {theirs!r} asked, the agent's is {ours!r}"


def refusal(ours: Mapping, theirs: Mapping, *, routers: bool = True) -> str | None:
    """Why the agent (``ours``) must not answer for ``theirs`` (the CLI's shape); None: it may.
    Without ``routers`` (``status``: containers only) the router's part is not compared."""
    if theirs.get("environment") != ours.get("environment"):
        return _differs("environment", ours.get("environment"), theirs.get("environment"))
    if theirs.get("pins") != ours.get("pins"):
        return "the pinned host keys (known_hosts) differ from the agent's"
    if routers and theirs.get("router") != ours.get("router"):
        mine, asked = ours.get("router") or {}, theirs.get("router") or {}
        keys = sorted(set(mine) | set(asked))
        changed = [k for k in keys if mine.get(k) != asked.get(k)] or ["router"]
        return "the router settings differ from the agent's: " + ", ".join(changed)
    hosts = ours.get("hosts") or {}
    asked_hosts = theirs.get("hosts")
    if not isinstance(asked_hosts, Mapping) or not asked_hosts:
        return "no hosts asked"
    for name in sorted(asked_hosts):
        if name not in hosts:
            return f"host {name}: not a host of the agent's environment"
        asked = asked_hosts[name] if isinstance(asked_hosts[name], Mapping) else {}
        keys = ("address", "port", "user", "docker_socket") + (("site", "router_image") if routers else ())
        for key in keys:
            if asked.get(key) != hosts[name].get(key):
                return f"host {name}: " + _differs(key, hosts[name].get(key), asked.get(key))
    mine = ours.get("secrets") or []
    asked_secrets = theirs.get("secrets") or []
    if not isinstance(asked_secrets, list) or not all(isinstance(e, Mapping) for e in asked_secrets):
        return "secrets: expected a list of {service, name, file, hosts}"
    for entry in asked_secrets:
        if entry not in mine:
            hosts = entry.get("hosts")
            return (f"host-file secret {entry.get('service')}/{entry.get('name')} ({entry.get('file')} on "
                    f"{', '.join(map(str, hosts)) if isinstance(hosts, list) else hosts}): not so in the agent's environment")
    return None


def with_digests(env: Environment, digests: Mapping[tuple[str, str], str]) -> Environment:
    """``env`` with each host-file secret's keyed digest from ``digests``
    ((service, secret) -> digest), as ``adapters.secret_files.resolve`` fills
    them in from the hosts; KeyError for one it lacks."""
    import dataclasses

    services = []
    for service in env.services:
        refs = tuple(dataclasses.replace(ref, digest=digests[(service.name, ref.name)]) if ref.file is not None else ref
                     for ref in service.secrets)
        services.append(dataclasses.replace(service, secrets=refs))
    return dataclasses.replace(env, services=tuple(services))
