"""reconciler rollback: the emergency lever, back to a retained version on every host.

It runs through the engine like any deploy (lock, journal, a note in git),
and ends with a commit that sets the environment's files to the revision it
went back to, so the branch says what runs and the agent does not undo it.
"""

from __future__ import annotations

import os

from reconciler.cli.commands._common import add_target_arguments


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--to", dest="to_revision", help="the commit to go back to (default: the version before the running one)")
    parser.add_argument("--yes", action="store_true", help="roll back without asking")
    parser.add_argument("--signing-key", default=os.environ.get("RECONCILER_SIGNING_KEY"),
                        help="SSH private key to sign the lever's commit (and its notes) with; needed under "
                             "policy.require_signed, its public key in the agent's allowed_signers (default: $RECONCILER_SIGNING_KEY)")


def run(args) -> int:
    from reconciler.cli.commands import _engine

    return _engine.run_command(args, "rollback", "roll back these hosts?", signing_key=args.signing_key,
                               to_revision=args.to_revision)
