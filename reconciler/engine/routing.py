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
from reconciler.core.model import Environment
from reconciler.core.managed import ObservedHost


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


def _view(environment: Environment, host: str, router: Any, observed: ObservedHost, asked=None) -> rt.RouterView:
    """One host's router as the planner sees it: its servers and config skeleton.
    ``asked``: the servers and the config's header, already asked (futures)."""
    if router_image.spec_for(environment, host) is not None \
            and router_image.running_router(environment, observed) is None:
        return rt.RouterView((), router.config_hash())  # its container is yet to start: no servers
    if asked is not None:
        servers, (skeleton, owner) = asked[0].result(), asked[1].result()
    else:
        servers, (skeleton, owner) = router.servers(), router.header()
    config_file = rt.access_fields(environment.router, environment.host(host))["config_file"]
    refused = router_owner.refusal(environment.name, owner, servers.values(), host, config_file)
    if refused:
        raise RouterOwned(refused, host=host)
    if skeleton is not None and hasattr(router, "serves_site") and router.serves_site() is False:
        # The file is ours but the process does not run it (a reload failed
        # after the write): no skeleton, so the plan configures it again
        # instead of adding servers to backends the router does not have.
        skeleton = None
    maps = router.view_maps() if hasattr(router, "view_maps") else ()  # core.traffic's entries
    return rt.RouterView(tuple(servers[k] for k in sorted(servers)), skeleton, maps)


def observe(environment: Environment, observed: Mapping[str, ObservedHost], routers: Mapping[str, Any]) -> dict[str, ObservedHost]:
    """``observed`` with each exposed host's router: its servers and config skeleton (hosts in parallel)."""
    wanted = [h for h in observed if rt.site_for(environment, h) is not None and h in routers]
    if not wanted:
        return dict(observed)
    with ThreadPoolExecutor(max_workers=min(16, len(wanted))) as pool:
        views = dict(zip(wanted, pool.map(lambda host: _view(environment, host, routers[host], observed[host]), wanted)))
    return {name: dataclasses.replace(obs, router=views[name]) if name in views else obs for name, obs in observed.items()}


def observe_host(environment: Environment, driver: Any) -> ObservedHost:
    """What a plan needs to see of one host: its containers and, where exposed
    services run, its router.  For a router of the host's package, the three
    requests (the container list, the router's servers, its config file's
    head) go at once, each on its own channel of the host's one connection;
    a router run from an image is asked once its container is seen running.
    For callers outside a run (``reconciler plan``)."""
    routers = RouterMap(environment, {driver.name: driver}) if environment.router is not None else {}
    if driver.name not in routers:
        return driver.observe()
    router = routers[driver.name]
    if router_image.spec_for(environment, driver.name) is not None:
        containers = driver.observe()
        return dataclasses.replace(containers, router=_view(environment, driver.name, router, containers))
    with ThreadPoolExecutor(max_workers=2) as pool:
        asked = (pool.submit(router.servers), pool.submit(router.header))
        containers = driver.observe()
        return dataclasses.replace(containers, router=_view(environment, driver.name, router, containers, asked))
