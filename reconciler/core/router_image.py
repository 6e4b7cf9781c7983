"""An environment's router run as a container of a pinned image.  Pure.

``router: {image: REGISTRY/haproxy:TAG@sha256:..., ...}`` says: on every
host that needs a router (it runs an exposed service), HAProxy runs as a
container of that image instead of the host's package.  The container is
the environment's (``LABEL_ROUTER`` names it) but no service's: it carries
no ``LABEL_ENVIRONMENT``, so service reconciliation (deploys, prunes,
drift) never touches it; it is observed with the host's containers and
planned here.

What the container is (``spec_for``): ``haproxy -W -db -f CONFIG`` in
master-worker mode, on the host's network (it binds the host's address and
the host's loopback admin address, as the package would), with the config
file's directory mounted at the same path (the config, the server-state
file and the unix admin socket live there, written by the product over
SSH as for the package), restarted by the engine with the host
(``unless-stopped``: it starts again from the config file, which holds the
live servers).  A reload is ``SIGUSR2`` to its master through the Engine
API; a candidate config is checked by the image's own ``haproxy -c``.

The steps (``steps``): ``Pull`` of the image and ``StartRouter`` on a host
where the environment's router container is missing, stopped, of another
image or bind, or where a replacement was interrupted (its ``-replaced``
copy is still there); ``RemoveRouter`` where the environment no longer
needs one.  ``StartRouter`` keeps the live routing (engine.router_container):
the config file is first rewritten from the running router's servers, the
new container takes the listening sockets over from the old one (``-x``
its admin socket), and only then does the old one finish its requests and
go.  One environment owns a host's router: another environment's router
container on the same host and port stops the plan (``RouterOwned``),
naming both.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Mapping

from reconciler.core import router as rt
from reconciler.core.model import Environment, ImageRef
from reconciler.core.managed import LABEL_PREFIX, LABEL_ROUTER, ObservedContainer, ObservedHost
from reconciler.core.plan_steps import Action, Pull
from reconciler.errors import RouterOwned

LABEL_ROUTER_IMAGE = LABEL_PREFIX + "router.image"
LABEL_ROUTER_BIND = LABEL_PREFIX + "router.bind"
RESTART = "unless-stopped"


def container_name(environment: str) -> str:
    return f"reconciler-router-{environment}"


def replaced_name(environment: str) -> str:
    """Where a router being replaced waits, still serving, until its successor holds the listeners."""
    return f"{container_name(environment)}-replaced"


@dataclass(frozen=True)
class RouterContainer:
    """The router container of one host, as the engine is asked to create it."""

    name: str
    image: ImageRef
    config_file: str
    directory: str  # mounted read-write at the same path
    socket: str | None  # the unix admin socket a successor takes the listeners from
    bind: str
    labels: tuple[tuple[str, str], ...]
    restart: str = RESTART

    def command(self, take_over: bool = False) -> tuple[str, ...]:
        """The arguments after the image's ``haproxy``; ``take_over``: the listeners of the one running now."""
        args = ("-W", "-db", "-f", self.config_file)
        return (*args, "-x", self.socket) if take_over and self.socket else args

    def check(self, path: str) -> tuple[str, ...]:
        return ("-c", "-q", "-f", path)


def spec_for(environment: Environment, host: str) -> RouterContainer | None:
    """``host``'s router container for ``environment``; None when it needs none there (or uses the package)."""
    config = environment.router
    if config is None or config.image is None or rt.site_for(environment, host) is None:
        return None
    target = environment.host(host)
    settings = rt.settings_for(config, target)
    config_file = rt.access_fields(config, target)["config_file"]
    labels = {LABEL_ROUTER: environment.name, LABEL_ROUTER_IMAGE: str(config.image), LABEL_ROUTER_BIND: settings.bind}
    return RouterContainer(container_name(environment.name), config.image, config_file, posixpath.dirname(config_file),
                           settings.socket, settings.bind, tuple(sorted(labels.items())))


@dataclass(frozen=True)
class StartRouter(Action):
    """Start ``host``'s router container from ``image``, or replace the one there, keeping the live routing."""

    image: ImageRef = None  # type: ignore[assignment]
    replacing: str = ""  # the image of the router it replaces ("" when none runs)


@dataclass(frozen=True)
class RemoveRouter(Action):
    """The environment needs no router container on ``host`` any more: stop it (softly) and remove it."""

    container: str = ""


def _port(bind: str) -> str:
    return bind.rpartition(":")[2]


def _ours(host: ObservedHost, environment: str) -> dict[str, ObservedContainer]:
    return {c.name: c for c in host.containers if c.label(LABEL_ROUTER) == environment}


def conflicts(desired: Environment, observed: Mapping[str, ObservedHost]) -> tuple[str, ...]:
    """Another environment's running router container on a host and port this environment's router wants."""
    found = []
    for name in sorted(observed):
        spec = spec_for(desired, name) if name in {h.name for h in desired.hosts} else None
        if spec is None:
            continue
        for c in observed[name].containers:
            owner = c.label(LABEL_ROUTER)
            if owner and owner != desired.name and c.running and _port(c.label(LABEL_ROUTER_BIND) or "") == _port(spec.bind):
                found.append(f"{name}: port {_port(spec.bind)} is served by environment {owner!r}'s router "
                             f"(container {c.name}); environment {desired.name!r} cannot own it too: one environment "
                             "owns a host's router: give one of them another 'router.bind' port")
    return tuple(found)


def in_place(spec: RouterContainer, container: ObservedContainer | None) -> bool:
    return (container is not None and container.running and container.label(LABEL_ROUTER_IMAGE) == str(spec.image)
            and container.label(LABEL_ROUTER_BIND) == spec.bind)


def steps(desired: Environment, observed: Mapping[str, ObservedHost]) -> list[Action]:
    """Pull and StartRouter where the router container is not as desired; RemoveRouter where none is needed.

    Raises ``RouterOwned`` when another environment's router serves a host and port this one wants.
    """
    found = conflicts(desired, observed)
    if found:
        raise RouterOwned("; ".join(found))
    actions: list[Action] = []
    known = {h.name for h in desired.hosts}
    for name in sorted(observed):
        ours = _ours(observed[name], desired.name)
        spec = spec_for(desired, name) if name in known else None
        if spec is None:
            actions += [RemoveRouter(name, "", f"{c.name}: the environment needs no router container here",
                                     container=c.name) for c in sorted(ours.values(), key=lambda c: c.name)]
            continue
        current = ours.get(spec.name)
        leftover = ours.get(replaced_name(desired.name))
        if in_place(spec, current) and leftover is None:
            continue
        if in_place(spec, current):
            why = f"finish the replacement of the router by {spec.image}: the old one finishes its requests and goes"
        elif current is not None and current.running:
            why = f"replace the router ({current.label(LABEL_ROUTER_IMAGE)}) by {spec.image}, keeping the live routing"
        elif leftover is not None and leftover.running:
            why = f"replace the router ({leftover.label(LABEL_ROUTER_IMAGE)}) by {spec.image} (an interrupted replacement)"
        else:
            why = f"start the router from {spec.image} on the config file's routing"
        running = next((c for c in (current, leftover) if c is not None and c.running), None)
        if not in_place(spec, current):
            actions.append(Pull(name, "", f"make sure the router image {spec.image} is on {name}", image=spec.image))
        actions.append(StartRouter(name, "", why, image=spec.image,
                                   replacing=(running.label(LABEL_ROUTER_IMAGE) or "") if running else ""))
    return actions


def running_router(desired: Environment, host: ObservedHost) -> ObservedContainer | None:
    """The environment's router container that answers on ``host`` now (its successor first), if any."""
    ours = _ours(host, desired.name)
    for name in (container_name(desired.name), replaced_name(desired.name)):
        if name in ours and ours[name].running:
            return ours[name]
    return None


def status_rows(desired: Environment, observed: Mapping[str, ObservedHost]) -> list[dict]:
    """``reconciler status`` rows (``core.report.running_rows``' keys) for the environment's router containers."""
    rows = []
    for name in sorted(observed):
        spec = spec_for(desired, name) if name in {h.name for h in desired.hosts} else None
        for c in sorted(_ours(observed[name], desired.name).values(), key=lambda c: c.name):
            drift = [] if c.running else [f"state {c.state}"]
            if spec is None:
                drift.append("not desired here")
            elif c.name != spec.name:
                drift.append("a replacement left unfinished")
            elif not in_place(spec, c) and c.running:
                drift.append("image or bind differs from desired")
            rows.append({"host": name, "service": "(router)", "role": "active", "container": c.name,
                         "state": c.state, "health": c.health, "image": c.label(LABEL_ROUTER_IMAGE),
                         "revision": None, "drift": drift})
    return rows
