"""The executor's canary pauses and watches after the switch (``core.canary``).

A mix-in of ``executor.Executor`` (which gives ``routers``, ``clock``,
``sleep``, ``wall`` and ``report``): an ``Observe`` holds a canary step, a
``Watch`` the window after the last switch.  Both read the host's router
every check interval: the new version's server must stay UP (the router
runs the service's check) and its errors (the router's counters since
the server was added, summed over its backend and the QA backend, and
carried across a reload of the router, whose new worker counts from 0)
must stay within the rollout's abort rule.  A failure is a ``DeployFailed``: the
executor then switches every touched host back to the retained blue, and
the run is recorded as rolled back.

The hosts of one step are observed at once; the first that fails stops
the others' observing (they end without a verdict of their own), so the
switch back starts without waiting for the rest of their pause.

A watch reports when its window began (the ``watch`` event, kept in the
journal), and a canary's pause when it began to hold a step (``canary-pause``), so
a run that dies mid-watch or mid-pause is continued for what is left of it.
"""

from __future__ import annotations

import threading

from reconciler.core import canary
from reconciler.core import router as rt
from reconciler.errors import DeployFailed

MAX_INTERVAL = 1.0  # seconds between two readings of the router, at most


class WatchedSteps:
    def _observe(self, action: canary.Observe | canary.Watch) -> None:
        router = self.routers[action.host]
        service = self.desired.service(action.service)
        exposure = rt.exposure_of(service)
        backends = [b for b in (exposure.service, exposure.qa_backend) if b]
        if isinstance(action, canary.Watch):
            since = action.since or self.wall()
            left = since + action.seconds - self.wall()
            self.report("watch", host=action.host, service=action.service, since=since, until=since + action.seconds)
            what = f"watch after the switch ({action.seconds:g}s)"
        else:
            # The start goes in the journal: a run that dies mid-pause is continued for what is left.
            since = action.since or self.wall()
            left = action.seconds - (self.wall() - action.since if action.since else 0.0)
            self.report("canary-pause", host=action.host, service=action.service, server=action.server,
                        weight=action.weight, since=since, until=since + action.seconds)
            what = f"canary at {action.weight}%"
        interval = max(0.1, min(MAX_INTERVAL, exposure.check.interval))
        started = self.clock()
        # One per run: set by the first host that fails, read by the others.
        stop: threading.Event = self.__dict__.setdefault("_stop_observing", threading.Event())
        while True:
            if stop.is_set():
                return  # another host failed: the rollback comes next
            servers = router.servers()
            state = servers.get((service.name, action.server))
            if state is None or not state.up:
                seen = "not in the router" if state is None else f"DOWN ({state.check})"
                stop.set()
                raise DeployFailed(f"{what}: the router sees {action.server} {seen}", host=action.host)
            # Every error of the new version counts, from the moment it got requests (QA ones
            # included): one answered while a step's weights were being written is one too.
            errors, requests = self._since_added(action.host, action.server, servers, backends)
            why = canary.broken(action.max_errors, action.max_error_rate, errors, requests)
            if why is not None:
                failure = DeployFailed(f"{what}: {action.server}: {why}", host=action.host)
                failure.evidence = [f"router: {action.server} {state.check}; errors {errors}, "
                                    f"requests {requests} since it was added"]
                stop.set()
                raise failure
            remaining = left - (self.clock() - started)
            if remaining <= 0:
                return
            self.sleep(min(interval, remaining))

    def _since_added(self, host: str, server: str, servers, backends) -> tuple[int, int]:
        """(errors, requests) of ``server`` over ``backends`` since it was added, across reloads of the router.

        A reloaded HAProxy's new worker starts its counters at 0 (weights and
        check states come back from its files, counts do not): a backend's
        reading lower than the last one this run took there is a reset (or
        the server left that backend), and what was counted before is
        carried.  Per backend, so a QA server taken out is no reset of the
        public one.  Kept per run; one host's readings come from one thread.
        """
        tallies = self.__dict__.setdefault("_tallies", {})
        errors = requests = 0
        for backend in backends:
            e, r = canary.counts(servers, [backend], server)
            tally = tallies.setdefault((host, server, backend), [0, 0, 0, 0])
            if e < tally[2] or r < tally[3]:
                tally[0], tally[1] = tally[0] + tally[2], tally[1] + tally[3]
            tally[2], tally[3] = e, r
            errors, requests = errors + tally[0] + e, requests + tally[1] + r
        return errors, requests
