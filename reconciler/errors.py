"""The exception tree of reconciler.

Every error the product raises on purpose derives from ``ReconcilerError`` and
says, through its class, what the caller should do next (the three kinds
Flux's controllers carry as data)::

    ReconcilerError
    +-- StalledError          needs a human; do not retry until a new commit
    |   +-- InvalidDesiredState   the environment repository is wrong (file:line:col)
    |   +-- HostKeyMismatch       a host presented a key that is not the pinned one
    |   +-- UnknownHostKey        a host has no pinned key at all
    |   +-- ImageNotPinned        policy wants a digest and the image has none
    |   +-- DeployFailed          health checks failed; rolled back
    |   +-- RollbackFailed        rolling back failed too: a human must look now
    |   +-- SandboxError          the local fleet could not be set up
    |   +-- RouterConfigRejected  a host's HAProxy refused the config we rendered
    +-- WaitingError          retry later, the world may change (a lock, a freeze)
    |   +-- LockHeld
    +-- TransientError        retry with backoff and jitter
        +-- HostUnreachable       SSH could not connect / timed out
        +-- EngineError           the Docker engine on a host answered with an error
        +-- RouterError           a host's router (HAProxy) failed or refused a command

``kind`` is one of ``"stalled"``, ``"waiting"``, ``"transient"``.  Errors that
concern a host carry ``host``; errors that concern a file carry its location
in their message.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error reconciler raises on purpose."""

    kind = "stalled"

    def __init__(self, message: str, *, host: str | None = None) -> None:
        self.host = host
        super().__init__(f"{host}: {message}" if host else message)


class StalledError(ReconcilerError):
    """A human must act; retrying the same commit would fail the same way."""

    kind = "stalled"


class WaitingError(ReconcilerError):
    """Nothing is wrong with the input; try again later."""

    kind = "waiting"


class TransientError(ReconcilerError):
    """A passing fault (network, engine); retry with backoff."""

    kind = "transient"


class InvalidDesiredState(StalledError):
    """The desired state does not validate.

    ``problems`` holds every problem found, each already formatted as
    ``path:line:col: message``; the message joins them one per line.
    """

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems) or "invalid desired state")


class HostKeyMismatch(StalledError):
    """The host's key differs from the pinned one (possible man in the middle)."""


class UnknownHostKey(StalledError):
    """No key is pinned for the host in the environment's known_hosts."""


class ImageNotPinned(StalledError):
    """The image reference has no digest where policy requires one."""


class DeployFailed(StalledError):
    """A deploy failed its health checks and was rolled back."""


class RollbackFailed(StalledError):
    """The rollback after a failed deploy failed as well."""


class SandboxError(StalledError):
    """The local fleet (``reconciler sandbox``) could not be brought up."""


class RouterConfigRejected(StalledError):
    """``haproxy -c`` on the host rejected the rendered config; the running one is unchanged."""


class LockHeld(WaitingError):
    """Another reconcile, or a manual freeze, holds the environment."""


class HostUnreachable(TransientError):
    """SSH to the host failed or timed out."""


class EngineError(TransientError):
    """The Docker engine on a host failed a request."""


class RouterError(TransientError):
    """The router on a host failed a Runtime API command, or its admin socket did not answer."""
