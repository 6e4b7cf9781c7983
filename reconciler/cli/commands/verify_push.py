"""reconciler verify-push: the pre-receive hook's signature check for one ref update.

Run by hooks/pre-receive as ``python -m reconciler.cli.commands.verify_push``
(so it works before the command is listed in the CLI), once per updated
ref.  Prints one line per commit refused and exits 1 when any is.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = ("refuse a ref update that adds commits not signed by a trusted key, where policy.require_signed asks for it; "
        "for the agent's notes ref, a deletion, a rewrite or a notes commit the agent did not sign")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", help="the ref's old commit (40 zeros: created)")
    parser.add_argument("new", help="the ref's new commit")
    parser.add_argument("repo", nargs="?", default=os.environ.get("GIT_DIR", "."), help="the repository (default: $GIT_DIR)")
    parser.add_argument("--ref", required=True, help="the updated ref, e.g. refs/heads/main")
    parser.add_argument("--allowed-signers", help="trusted SSH keys (default: $RECONCILER_ALLOWED_SIGNERS, git config reconciler.allowedSigners)")
    parser.add_argument("--gpg-keyring", help="trusted OpenPGP keys (default: $RECONCILER_GPG_KEYRING, git config reconciler.gpgKeyring)")
    parser.add_argument("--agent-principal", help="the agent's principal in allowed_signers, the only signer of its notes "
                                                  "(default: $RECONCILER_AGENT_PRINCIPAL, git config reconciler.agentPrincipal)")
    parser.add_argument("--ssh-revoked", help="revoked SSH keys (default: $RECONCILER_SSH_REVOKED, git config reconciler.sshRevoked "
                                              "or gpg.ssh.revocationFile)")


def run(args: argparse.Namespace) -> int:
    from reconciler.adapters import notes_push, signed_push, source
    from reconciler.adapters.signatures import Trust

    repo = source.open_repository(args.repo)
    trust = Trust.from_environment(repo, allowed_signers=args.allowed_signers, gpg_keyring=args.gpg_keyring,
                                   ssh_revoked=args.ssh_revoked, agent_principal=args.agent_principal)
    if args.ref in notes_push.AGENT_REFS:
        refusals = notes_push.check(args.repo, args.ref, args.old, args.new, trust)
    else:
        refusals = signed_push.check(args.repo, args.ref, args.old, args.new, trust)
    for line in refusals:
        print(line)
    return 1 if refusals else 0


def main(argv: list[str] | None = None) -> int:
    from reconciler.errors import ReconcilerError

    parser = argparse.ArgumentParser(prog="reconciler verify-push", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ReconcilerError as exc:
        print(f"reconciler: error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
