"""The exit codes of every command: one table, one meaning each.

A script that calls reconciler reads the same number the same way whatever
the command: 10 is "changes pending" for ``plan`` and nothing else, 1 is an
error for ``validate`` as for ``apply``.  The README's table is this one
(tests/test_cli_contract.py compares them).
"""

from __future__ import annotations

from typing import Iterable

OK = 0  # done; valid; in sync; nothing to do
ERROR = 1  # an error a human must look at: invalid desired state, refused, unreachable, not found
USAGE = 2  # the command line is wrong (argparse's own code): unknown option, missing --env among several
FAILED = 3  # a deploy or rollback ran and failed: the hosts were put back (or could not be, see the output)
WAITING = 4  # nothing wrong, try again later: the environment is frozen or another run holds its lock
CHANGES = 10  # plan: the hosts differ from the commit; apply would change them
INTERRUPTED = 130  # Ctrl-C, as a shell reports it

TABLE: tuple[tuple[int, str], ...] = (
    (OK, "success: valid, in sync, deployed, rolled back on request"),
    (ERROR, "error: invalid desired state, refused, host unreachable, not found"),
    (USAGE, "usage: the command line is wrong (unknown option, --env needed among several)"),
    (FAILED, "a deploy or rollback failed: the hosts were rolled back (apply, run --once) or the lever failed"),
    (WAITING, "waiting: the environment is frozen or locked by another run; try later"),
    (CHANGES, "changes pending (plan): apply would change the hosts"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
)

# Which of two codes says more about a run of several environments
# (run --once): an error outweighs a failed deploy, which outweighs waiting.
_SEVERITY = (OK, CHANGES, WAITING, FAILED, ERROR, USAGE, INTERRUPTED)

# The engine's results that mean the operation asked for happened.
_SUCCESS = {
    "deploy": ("deployed", "in-sync"),
    "rollback": ("rolled-back", "in-sync"),
    "restore": ("restored",),
    "contract": ("contracted", "in-sync"),
}


def worst(codes: Iterable[int]) -> int:
    return max(codes, key=_SEVERITY.index, default=OK)


def of_error(kind: str) -> int:
    """A ReconcilerError's code by its kind: waiting is 4, any other 1."""
    return WAITING if kind == "waiting" else ERROR


def of_result(result, operation: str) -> int:
    """The code of an engine ``Result`` for ``operation``.

    A deploy that rolled back, or a run that failed after changing hosts (it
    has an outcome), is FAILED; a freeze or a held lock is WAITING; a run
    refused or stopped before changing anything is ERROR.
    """
    if result.result in _SUCCESS.get(operation, ()):
        return OK
    if result.kind == "waiting" or result.result in ("frozen", "locked"):
        return WAITING
    if result.result == "rolled-back" or (result.result == "failed" and result.outcome is not None):
        return FAILED
    return ERROR
