"""The routers of an environment's hosts: built from the desired state, observed before a plan.

Every host that runs a service with ``expose`` has a router (HAProxy) the
environment's ``router:`` block describes; ``RouterMap`` gives, per such
host, an ``adapters.router.Router`` speaking its Runtime API over the
host's own pinned SSH connection (the host driver's, so a connection the
driver reopened is the one used).  ``observe`` adds each router's servers
and config skeleton to the hosts' observation, so that the planner sees
the router's state like the containers'.  A router run from an image
(``core.router_image``) is checked and reloaded through the host's engine,
and is observed with no servers while its container is yet to start.
A router whose config file names another environment as its owner, with
live servers, stops the observation (``core.router_owner``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

from reconciler.core import router as rt
from reconciler.core import router_image, router_owner
from reconciler.errors import RouterOwned
from reconciler.core.model import Environment, ObservedHost


class RouterMap(Mapping):
    """host name -> its Router, for the hosts whose router serves something of ``environment``."""

    def __init__(self, environment: Environment, hosts: Mapping[str, Any]) -> None:
        self.environment = environment
        self.hosts = hosts
        self._sites = {name: site for name in hosts if (site := rt.site_for(environment, name)) is not None}
        self._built: dict[str, Any] = {}

    def __getitem__(self, host: str):
        if host not in self._sites:
            raise KeyError(host)
        if host not in self._built:
            from reconciler.adapters.router import Router, RouterAccess

            fields = rt.access_fields(self.environment.router, self.environment.host(host))
            spec = router_image.spec_for(self.environment, host)
            if spec is not None:  # a router container: checked and reloaded through the engine
                from reconciler.adapters.router_container import RouterEngine

                engine = RouterEngine(self.hosts[host], spec)
                fields = dict(fields, reload_command="", check_command="", checker=engine.check, reloader=engine.reload)
            self._built[host] = Router(self.hosts[host], RouterAccess(host=host, owner=self.environment.name, **fields),
                                       self._sites[host])
        return self._built[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sites)

    def __len__(self) -> int:
        return len(self._sites)


def observe(environment: Environment, observed: Mapping[str, ObservedHost], routers: Mapping[str, Any]) -> dict[str, ObservedHost]:
    """``observed`` with each exposed host's router: its servers and config skeleton (hosts in parallel)."""
    wanted = [h for h in observed if rt.site_for(environment, h) is not None and h in routers]
    if not wanted:
        return dict(observed)

    def view(host: str) -> rt.RouterView:
        router = routers[host]
        if router_image.spec_for(environment, host) is not None \
                and router_image.running_router(environment, observed[host]) is None:
            return rt.RouterView((), router.config_hash())  # its container is yet to start: no servers
        servers = router.servers()
        skeleton, owner = router.header()
        config_file = rt.access_fields(environment.router, environment.host(host))["config_file"]
        refused = router_owner.refusal(environment.name, owner, servers.values(), host, config_file)
        if refused:
            raise RouterOwned(refused, host=host)
        return rt.RouterView(tuple(servers[k] for k in sorted(servers)), skeleton)

    with ThreadPoolExecutor(max_workers=min(16, len(wanted))) as pool:
        views = dict(zip(wanted, pool.map(view, wanted)))
    return {name: dataclasses.replace(obs, router=views[name]) if name in views else obs for name, obs in observed.items()}


def observe_hosts(environment: Environment, hosts: Mapping[str, Any]) -> dict[str, ObservedHost]:
    """What a plan needs to see: every host's containers and, where exposed services run, its router
    (for callers outside a run, e.g. ``reconciler plan``)."""
    from reconciler.adapters import fleet

    observed = fleet.observe_all(hosts)
    if environment.router is None:
        return observed
    return observe(environment, observed, RouterMap(environment, hosts))
