"""reconciler history: the deployment log, read from git alone."""

from __future__ import annotations

import json
from dataclasses import asdict

from reconciler.cli.commands._agent import git_dir
from reconciler.cli.commands._common import add_repo_argument, choose_env


def add_arguments(parser) -> None:
    add_repo_argument(parser)
    parser.add_argument("--env", help="only this environment (--at: optional when the repository has only one)")
    parser.add_argument("--service", help="only commits that changed this service")
    parser.add_argument("--at", metavar="TIMESTAMP", help="what each host ran at this moment (ISO 8601 or epoch seconds), in one environment")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verify-notes", action="store_true",
                        help="check that each attempt was written by a notes commit the agent signed (--signing-key), "
                             "against the trusted keys; exit 1 when one was not")
    parser.add_argument("--agent-principal", help="with --verify-notes: the agent's principal in allowed_signers "
                                                  "(a note signed by another trusted key is then not the agent's; default: $RECONCILER_AGENT_PRINCIPAL, "
                                                  "git config reconciler.agentPrincipal)")
    parser.add_argument("--allowed-signers", help="with --verify-notes: trusted SSH keys (default: $RECONCILER_ALLOWED_SIGNERS, "
                                                  "git config reconciler.allowedSigners)")


def run(args) -> int:
    from reconciler.adapters import gitlog
    from reconciler.adapters import githistory
    from reconciler.core import record
    repo = gitlog.open_repo(git_dir(args.repo))
    if args.at:
        choose_env(args)
        at = githistory.parse_time(args.at)
        running = {k: v for k, v in githistory.running_at(repo, args.env, at).items() if not args.service or k[1] == args.service}
        if args.json:
            print(json.dumps([asdict(s) for _, s in sorted(running.items())], indent=2, sort_keys=True))
            return 0
        if not running:
            print(f"{args.env} at {githistory.iso(at)}: nothing recorded by reconciler yet")
            return 0
        print(f"{args.env} at {githistory.iso(at)}:")
        for (host, service), s in sorted(running.items()):
            what = s.image if s.image else f"nothing running ({s.state})"
            since = f"since {githistory.iso(s.at)}"
            rev = f" rev {s.revision[:12]}" if s.revision else ""
            container = f" container {s.container[:12]}" if s.container else ""
            print(f"  {host}/{service}: {what}{rev}{container} {since}")
        return 0
    entries = githistory.history(repo, env=args.env, service=args.service, limit=args.limit)
    writers = None
    if args.verify_notes:
        from reconciler.adapters import notes_trust, signatures

        trust = signatures.Trust.from_environment(repo, allowed_signers=args.allowed_signers, agent_principal=args.agent_principal)
        writers = notes_trust.writers(repo, trust, agent=trust.agent_principal)

    def written_by(e, a):
        from reconciler.adapters import notes_trust

        return writers.get(notes_trust.attempt_key(e.commit, a)) if writers is not None else None

    untrusted = [w for e in entries for a in e.attempts for w in [written_by(e, a)] if writers is not None and (w is None or not w.trusted)]
    code = 1 if untrusted else 0
    if args.json:
        def note(e, a) -> dict:
            if writers is None:
                return {}
            w = written_by(e, a)
            return {"note": {"notes_commit": w.notes_commit if w else None, "signer": str(w.signer) if w and w.signer else None,
                             "trusted": bool(w and w.trusted), "problem": w.problem if w else "not found in the notes history"}}

        print(json.dumps([{**{k: v for k, v in asdict(e).items() if k != "attempts"},
                           "attempts": [{**record.to_json(a), **note(e, a)} for a in e.attempts]} for e in entries],
                         indent=2, sort_keys=True))
        return code
    for e in entries:
        merged = "" if e.committer == e.author else f", merged by {e.committer} {githistory.iso(e.committed)}"
        print(f"{githistory.iso(e.committed)} {e.commit[:12]} {e.subject}")
        print(f"    by {e.author} {githistory.iso(e.authored)}{merged}")
        print(f"    changed: {', '.join(e.changed) or '(nothing)'}")
        if not e.attempts:
            print("    outcome: not deployed")
        for a in e.attempts:
            op = "" if a.operation == "deploy" else f"{a.operation} "
            who = f" by {a.actor}" if a.actor else ""
            trigger = f" ({a.trigger})" if a.trigger else ""
            print(f"    {a.environment}: {op}{a.result} {githistory.iso(a.finished or a.started)}{who}{trigger}")
            if a.signer:
                print(f"        signed by {a.signer}")
            if a.message:
                print(f"        {a.reason + ': ' if a.reason and a.reason not in a.message else ''}{a.message.splitlines()[0]}")
            if a.revert_commit:
                print(f"        reverted by {a.revert_commit[:12]}")
            if a.superseded_by:
                print(f"        superseded by {a.superseded_by[:12]}")
            if writers is not None:
                w = written_by(e, a)
                print(f"        {w.describe() if w else 'note NOT signed by the agent: not found in the notes history'}")
    if not entries:
        print("no history")
    if untrusted:
        print(f"{len(untrusted)} attempt(s) in the notes were not written by the agent (see 'note NOT signed' above)")
    return code
