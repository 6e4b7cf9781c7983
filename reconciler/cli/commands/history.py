"""reconciler history: the deployment log, read from git alone."""

from __future__ import annotations

import json
from dataclasses import asdict

from reconciler.cli.commands._agent import git_dir

HELP = "the deployment log from git: when, which commit, who wrote and merged it, what changed, the outcome; --at: what ran then"


def add_arguments(parser) -> None:
    import os

    parser.add_argument("--repo", default=os.environ.get("RECONCILER_REPO", "."), help="environment repository (default: .)")
    parser.add_argument("--env", help="only this environment")
    parser.add_argument("--service", help="only commits that changed this service")
    parser.add_argument("--at", metavar="TIMESTAMP", help="what ran at this moment (ISO 8601 or epoch seconds); needs --env")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--json", action="store_true")


def run(args) -> int:
    from reconciler.adapters import gitlog
    from reconciler.errors import StalledError

    repo = gitlog.open_repo(git_dir(args.repo))
    if args.at:
        if not args.env:
            raise StalledError("history --at needs --env")
        at = gitlog.parse_time(args.at)
        record = gitlog.running_at(repo, args.env, at)
        if args.json:
            print(json.dumps(record, indent=2, sort_keys=True))
            return 0
        if record is None:
            print(f"{args.env} at {gitlog.iso(at)}: nothing deployed by reconciler yet")
            return 0
        commit = repo[record["commit"]]
        print(f"{args.env} at {gitlog.iso(at)} ran {record['commit'][:12]} (deployed {gitlog.iso(record.get('finished', 0))}): {commit.message.splitlines()[0] if commit.message else ''}")
        for service, image in sorted(record.get("digests", {}).items()):
            if args.service and service != args.service:
                continue
            print(f"  {service}: {image}")
        return 0
    entries = gitlog.history(repo, env=args.env, service=args.service, limit=args.limit)
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2, sort_keys=True))
        return 0
    for e in entries:
        outcomes = ", ".join(f"{r.get('environment')} {r.get('result')}" + (f" {gitlog.iso(r['finished'])}" if r.get("finished") else "") for r in e.records) or "not deployed"
        merged = "" if e.committer == e.author else f", merged by {e.committer} {gitlog.iso(e.committed)}"
        print(f"{gitlog.iso(e.committed)} {e.commit[:12]} {e.subject}")
        print(f"    by {e.author} {gitlog.iso(e.authored)}{merged}")
        print(f"    changed: {', '.join(e.changed) or '(nothing)'}")
        print(f"    outcome: {outcomes}")
        for r in e.records:
            if r.get("failure"):
                print(f"    {r.get('environment')}: {r['failure'].splitlines()[0]}")
            if r.get("revert_commit"):
                print(f"    {r.get('environment')}: reverted by {r['revert_commit'][:12]}")
            if r.get("superseded_by"):
                print(f"    {r.get('environment')}: superseded by {r['superseded_by'][:12]}")
    if not entries:
        print("no history")
    return 0
