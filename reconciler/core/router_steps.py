"""A host's router switch as data: the steps and what each sends.  Pure.

``switch_steps`` is the blue-green sequence (add green with weight 0 and
the service's check, wait until the router sees it UP, move the weight,
drain blue, wait until it has no session, take it out), ``rollback_steps``
the same switch back to a retained blue, and ``cutover_steps`` generalises
both for the planner (any number of old servers, ``Ready`` for a server
switched back to after it was drained).  ``commands`` gives the Runtime API
lines each step sends; ``in_effect`` and ``resume`` read the router's
observed servers (``core.router``), so a run that crashed mid-switch
continues from the first step the router does not show done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from reconciler.core.router import FULL_WEIGHT, Observed, RouterCheck, Server, server_options

@dataclass(frozen=True)
class RouterStep:
    host: str
    backend: str

    @property
    def step(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Configure(RouterStep):
    """Write the config for a changed skeleton (a new backend or rule) and reload.

    ``backend`` is unused (""): it concerns the whole router of the host.
    """


@dataclass(frozen=True)
class AddServer(RouterStep):
    """Add ``server`` with weight 0 and the backend's check; it must pass ``rise`` checks."""

    server: str = ""
    address: str = ""
    port: int = 0
    check: RouterCheck = RouterCheck()
    sticky: bool = False  # the backend inserts a dynamic cookie: give this server its value
    backup: bool = False  # added as a backup server (a standby during the watch, core.canary)


@dataclass(frozen=True)
class WaitUp(RouterStep):
    server: str = ""
    deadline: float = 60.0  # seconds from the start of the wait


@dataclass(frozen=True)
class SetWeights(RouterStep):
    """Set weights in one command line, raised ones first: the backend never has weight 0 in all."""

    weights: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Ready(RouterStep):
    """Out of drain: a server switched back to (a rollback) may have been drained already."""

    server: str = ""


@dataclass(frozen=True)
class Drain(RouterStep):
    server: str = ""


@dataclass(frozen=True)
class WaitDrained(RouterStep):
    """Wait for ``server`` to have no session, or ``deadline`` seconds; then go on either way."""

    server: str = ""
    deadline: float = 30.0


@dataclass(frozen=True)
class Maint(RouterStep):
    server: str = ""


@dataclass(frozen=True)
class DelServer(RouterStep):
    server: str = ""


def switch_steps(host: str, backend: str, *, green: Server, blue: str | None, check: RouterCheck,
                 up_deadline: float, drain_deadline: float) -> tuple[RouterStep, ...]:
    """Blue-green on one host: green takes every new request once the router sees it UP.

    ``blue`` None is a first deploy: nothing to drain.  The caller stops
    blue's container after the last step and keeps it for a rollback.
    """
    steps: list[RouterStep] = [
        AddServer(host, backend, green.name, green.address, green.port, check),
        WaitUp(host, backend, green.name, up_deadline),
    ]
    if blue is None:
        return (*steps, SetWeights(host, backend, ((green.name, FULL_WEIGHT),)))
    return (*steps,
            SetWeights(host, backend, ((green.name, FULL_WEIGHT), (blue, 0))),
            Drain(host, backend, blue),
            WaitDrained(host, backend, blue, drain_deadline),
            Maint(host, backend, blue),
            DelServer(host, backend, blue))


def rollback_steps(host: str, backend: str, *, retained: Server, current: str, check: RouterCheck,
                   up_deadline: float, drain_deadline: float) -> tuple[RouterStep, ...]:
    """The switch back: the retained blue (started again) in, the current green drained out."""
    return switch_steps(host, backend, green=retained, blue=current, check=check,
                        up_deadline=up_deadline, drain_deadline=drain_deadline)


def cutover_steps(host: str, backend: str, *, green: Server, others: Sequence[str], check: RouterCheck,
                  up_deadline: float, drain_deadline: float, ready: bool = True,
                  sticky: bool = False) -> tuple[RouterStep, ...]:
    """Every new request of ``backend`` to ``green`` once the router sees it UP; each of ``others`` drained and taken out.

    ``switch_steps`` for a backend that may hold more than one old server
    (a leftover of an interrupted run) or a drained one to switch back to:
    ``Ready`` takes green out of drain before its weight is raised, which is
    in effect at once for a server never drained (``ready=False`` leaves it
    out for a server just added: nothing drained it).  One ``SetWeights``
    line moves every weight, so the backend never has all its servers at 0.
    """
    others = tuple(o for o in others if o != green.name)
    steps: list[RouterStep] = [
        AddServer(host, backend, green.name, green.address, green.port, check, sticky=sticky),
        WaitUp(host, backend, green.name, up_deadline),
        *((Ready(host, backend, green.name),) if ready else ()),
        SetWeights(host, backend, ((green.name, FULL_WEIGHT), *((o, 0) for o in others))),
    ]
    for other in others:
        steps += [Drain(host, backend, other), WaitDrained(host, backend, other, drain_deadline),
                  Maint(host, backend, other), DelServer(host, backend, other)]
    return tuple(steps)


def abandon_steps(host: str, backend: str, server: str) -> tuple[RouterStep, ...]:
    """Take out a green that never came UP: it never had weight, so nothing to drain."""
    return (Maint(host, backend, server), DelServer(host, backend, server))


@dataclass(frozen=True)
class Command:
    """One Runtime API line and the answers that mean success.

    ``ok`` holds prefixes of a successful answer (stripped); ``""`` stands
    for the empty answer HAProxy gives a ``set`` that worked.  A line of
    several ``;``-separated commands succeeds only with an empty answer.
    """

    line: str
    ok: tuple[str, ...] = ("",)

    def succeeded(self, answer: str) -> bool:
        answer = answer.strip()
        return any(answer.startswith(p) if p else answer == "" for p in self.ok)


def commands(step: RouterStep, exists: bool = False) -> tuple[Command, ...]:
    """The Runtime API commands of a step that changes the router (not the waits).

    ``exists``: for AddServer, the server is there already (a resumed run);
    it gets its address and a fresh check instead of a second ``add``.
    """
    ref = f"{step.backend}/{getattr(step, 'server', '')}"
    if isinstance(step, AddServer):
        # Ready and forced down in one line: UP then takes ``rise`` passes.
        rearm = Command(f"set server {ref} weight 0; set server {ref} state ready; set server {ref} health down")
        # A dynamic cookie is computed from the address: (re)computed once it is set.
        cookie = (Command(f"enable dynamic-cookie backend {step.backend}"),) if step.sticky else ()
        if exists:
            return (Command(f"set server {ref} state maint"),
                    Command(f"set server {ref} addr {step.address} port {step.port}",
                            ok=("IP changed from", "no need to change the addr", "port changed from")),
                    *cookie, Command(f"enable health {ref}"), rearm)
        return (Command(f"add server {ref} {step.address}:{step.port} {server_options(step.check, 0, step.backup)}",
                        ok=("New server registered.",)),
                *cookie, Command(f"enable health {ref}"), rearm)
    if isinstance(step, SetWeights):
        ordered = sorted(step.weights, key=lambda w: -w[1])
        return (Command("; ".join(f"set server {step.backend}/{name} weight {w}" for name, w in ordered)),)
    if isinstance(step, Ready):
        return (Command(f"set server {ref} state ready"),)
    if isinstance(step, Drain):
        return (Command(f"set server {ref} state drain"),)
    if isinstance(step, Maint):
        return (Command(f"set server {ref} state maint"),)
    if isinstance(step, DelServer):
        return (Command(f"del server {ref}", ok=("Server deleted.",)),)
    return ()


def in_effect(step: RouterStep, observed: Observed) -> bool:
    """Whether the router already shows what ``step`` brings about.

    Causal on purpose: blue with no session is not "drained" unless it is
    draining or out, otherwise a resumed run could skip the switch itself.
    """
    server = getattr(step, "server", "")
    state = observed.get((step.backend, server))
    if isinstance(step, AddServer):
        return (state is not None and not state.maint and state.address == step.address
                and state.port == step.port)
    if isinstance(step, WaitUp):
        return state is not None and state.up
    if isinstance(step, SetWeights):
        # A server to get weight 0 that is gone already gets no request either.
        return all(((s := observed.get((step.backend, name))) is not None and s.weight == w and not s.maint)
                   or (w == 0 and (s is None or s.weight == 0)) for name, w in step.weights)
    if isinstance(step, Ready):
        return state is not None and not state.drain and not state.maint
    if isinstance(step, Drain):
        return state is None or state.drain or state.maint
    if isinstance(step, WaitDrained):
        return state is None or ((state.drain or state.maint) and state.sessions == 0)
    if isinstance(step, Maint):
        return state is None or state.maint
    if isinstance(step, DelServer):
        return state is None
    return False


def resume(steps: Sequence[RouterStep], observed: Observed) -> tuple[RouterStep, ...]:
    """The steps left from the first one the router does not show in effect.

    A prefix, not "after the furthest": a blue absent from the router would
    make the last steps vacuously true, and skipping to them would skip the
    switch.  A green that went DOWN after its switch resumes at WaitUp; the
    watch after the switch, not this, decides to switch back.
    """
    for i, step in enumerate(steps):
        if not in_effect(step, observed):
            return tuple(steps[i:])
    return ()
