"""The exception tree of reconciler.

Every error the product raises on purpose derives from ``ReconcilerError`` and
says, through its class, what the caller should do next (the three kinds
Flux's controllers carry as data)::

    ReconcilerError
    +-- SourceError           the repository or revision cannot be read
    +-- StalledError          needs a human; do not retry until a new commit
    |   +-- InvalidDesiredState   the environment repository is wrong (file:line:col)
    |   +-- HostKeyMismatch       a host presented a key that is not the pinned one
    |   +-- UnknownHostKey        a host has no pinned key at all
    |   +-- ImageNotPinned        policy wants a digest and the image has none
    |   +-- DeployFailed          health checks failed; rolled back            (blames the commit)
    |   +-- MigrationError        migration files malformed or refused         (blames the commit)
    |   |   +-- MigrationRefused      an expand file is not additive
    |   +-- ContractRollbackRefused  a release older than a contract that ran (blames the commit)
    |   +-- BackupFailed          no verified backup: no migration, no deploy
    |   +-- MigrationFailed       a migration statement failed (says whether half-applied)
    |   +-- DatabaseError         the database could not be reached or refused a request
    |   +-- RollbackRefused       the rollback lever has no target on some host
    |   +-- RollbackFailed        rolling back failed too: a human must look now
    |   +-- SandboxError          the local fleet could not be set up
    |   +-- RouterConfigRejected  a host's HAProxy refused the config we rendered
    |   +-- RouterOwned           another environment owns the router on that host and port
    |   +-- SecretUnreadable      a secret file on a host is missing or cannot be read
    |   +-- UnsignedCommit        policy.require_signed and the commit carries no signature
    |   +-- BadSignature          the signature does not verify against the trusted keys
    |   +-- SigningKeyRequired    require_signed, and the lever cannot sign the commit it must make
    +-- WaitingError          retry later, the world may change (a lock, a freeze)
    |   +-- LockHeld
    +-- TransientError        retry with backoff and jitter
        +-- HostUnreachable       SSH could not connect, timed out, or the connection was lost
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
    # True when the commit itself is at fault (its migrations, its release, its
    # health), so that ``policy.on_failure: revert`` reverts it; a host's key
    # or a lost connection is no reason to revert anybody's commit.
    blames_commit = False

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

    blames_commit = True


class MigrationError(StalledError):
    """Migration files are malformed, or a check refused them.

    ``problems`` holds each problem as ``file:line: message``.
    """

    blames_commit = True

    def __init__(self, problems) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems) or "migration error")


class MigrationRefused(MigrationError):
    """An expand migration contains a statement that is not additive."""


class ContractRollbackRefused(StalledError):
    """The release is older than a contract migration that already ran."""

    blames_commit = True  # the commit asks for that release: the engine may revert it (policy on_failure)


class BackupFailed(StalledError):
    """A backup could not be taken or does not verify: no migration, no deploy."""


class MigrationFailed(StalledError):
    """A migration statement failed; the message says whether it was half-applied."""


class DatabaseError(StalledError):
    """The database could not be reached or refused a request."""


class SourceError(ReconcilerError):
    """The repository or revision cannot be read (not a repository, unknown revision)."""


class RollbackRefused(StalledError):
    """The rollback lever found a host with no retained version to go back to."""


class RollbackFailed(StalledError):
    """The rollback after a failed deploy failed as well."""


class SandboxError(StalledError):
    """The local fleet (``reconciler sandbox``) could not be brought up."""


class RouterConfigRejected(StalledError):
    """``haproxy -c`` on the host rejected the rendered config; the running one is unchanged."""


class RouterOwned(StalledError):
    """Another environment's router already serves that host and port: one environment owns a
    host's router (its config file, or its container); the message names both."""


class SecretUnreadable(StalledError):
    """A secret's file on a host is missing, not readable, or cannot be read
    at all (no SFTP and no exec channel); the message names the host, the
    file, how it was read and what to change."""


class UnsignedCommit(StalledError):
    """The environment requires signed commits and this one is not signed.
    Not blamed on the commit for ``on_failure: revert``: the fix is a signed
    commit on top, not a revert by the agent."""


class BadSignature(StalledError):
    """The commit's signature does not verify against the trusted keys on the
    agent's machine (unknown key, wrong signature, expired or revoked key, or
    no trust root configured); the message says which."""


class SigningKeyRequired(StalledError):
    """policy.require_signed, and the rollback lever has no signing key the
    agent trusts for the commit that makes the branch say what runs: without
    it the agent would refuse that commit.  Raised before any host changes."""


class LockHeld(WaitingError):
    """Another reconcile, or a manual freeze, holds the environment."""


class HostUnreachable(TransientError):
    """SSH to the host failed or timed out, or an open connection was lost.

    Every SSH-level failure ends as this (paramiko's, and the HTTP stack's
    above an SSH channel), naming the host and the operation that failed."""


class EngineError(TransientError):
    """The Docker engine on a host failed a request."""


class RouterError(TransientError):
    """The router on a host failed a Runtime API command, or its admin socket did not answer."""
