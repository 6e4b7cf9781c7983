"""The executor's router container steps: ``StartRouter`` and ``RemoveRouter`` (``core.router_image``).

Starting or replacing a host's router container never drops the live
routing:

1. while the router that serves now still answers, its servers (weights,
   states, check states) are written into the config file and the
   server-state file (``Router.persist``, checked by the serving router's
   own ``haproxy -c``); with none serving, a config file of ours is kept
   as it is (it holds what the router last served), another is replaced by
   the site's routing with no server;
2. the serving container moves aside (``-replaced``), still serving;
3. the new container starts from that file and takes the listening sockets
   over from the old one (``-x`` its admin socket, which lives in the
   mounted directory), so no connection is refused while both run; it must
   say its workers loaded the config, else it is removed, the old one gets
   its name back and the step fails with the new one's logs;
4. the old one is stopped with its stop signal, ``SIGUSR1`` (HAProxy's soft
   stop: it finishes the requests it holds), within ``SOFT_STOP`` seconds,
   then removed; then the admin socket must answer (the new one alone).

Each state in between is one the planner recognises (``core.router_image``:
a ``-replaced`` copy left behind, a successor already in place), so a run
that died in the middle is finished by the next one.
"""

from __future__ import annotations

import shlex

from reconciler.adapters.router import Observation
from reconciler.adapters.router_container import RouterEngine
from reconciler.core import router_image as ri
from reconciler.core.model import Environment
from reconciler.errors import ReconcilerError, RouterError

LOAD_DEADLINE = 30.0  # the new router's workers must have loaded the config by then
SOFT_STOP = 30.0  # the old router may finish its requests for this long


def start(driver, desired: Environment, action: ri.StartRouter, router) -> None:
    """Run ``action`` on ``driver``'s host; ``router``: that host's ``adapters.router.Router``."""
    spec = ri.spec_for(desired, action.host)
    if spec is None:
        raise RouterError("router container: the environment needs none on this host any more", host=action.host)
    engine = RouterEngine(driver, spec)
    aside = ri.replaced_name(desired.name)
    current, leftover = engine.find(spec.name), engine.find(aside)
    if ri.in_place(spec, current):
        if leftover is not None:  # an interrupted replacement: its successor serves already
            engine.soft_stop(leftover.id, SOFT_STOP)
        return
    _config_ready(router, spec, serving=any(c is not None and c.running for c in (current, leftover)))
    old = None
    if current is not None and current.running:
        if leftover is not None:
            engine.soft_stop(leftover.id, SOFT_STOP)  # an older one still: the current one holds the listeners too
        engine.rename(current.id, aside)
        old = current
    else:
        if current is not None:
            engine.remove(current.id)
        if leftover is not None and leftover.running:
            old = leftover
        elif leftover is not None:
            engine.remove(leftover.id)
    new = engine.create(take_over=old is not None)
    try:
        engine.start(new)
        engine.wait_loaded(new, LOAD_DEADLINE)
    except ReconcilerError:  # it did not start (EngineError) or did not load its config (RouterError)
        engine.remove(new)
        if old is not None:
            engine.rename(old.id, spec.name)  # it never stopped serving
        raise
    if old is not None:
        engine.soft_stop(old.id, SOFT_STOP)
    router.send("show info", "the new router answers")


def remove(driver, action: ri.RemoveRouter) -> None:
    for c in driver.observe().containers:
        if c.name == action.container:
            driver.stop(c.id, SOFT_STOP)
            driver.remove(c.id)


def _config_ready(router, spec: ri.RouterContainer, *, serving: bool) -> None:
    """The config file the new router starts from: the live servers when one serves, else the file of ours."""
    code, out = router._exec(f"mkdir -p {shlex.quote(spec.directory)}", b"", "router directory")
    if code != 0:
        raise RouterError(f"router container: cannot create {spec.directory} as the deploy user ({out}); "
                          "create it and give it to that user", host=router.name)
    if serving:
        router.persist()
    elif router.config_hash() is None:
        router.persist(Observation({}, "", frozenset()))
