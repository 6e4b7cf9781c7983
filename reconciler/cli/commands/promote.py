"""reconciler promote: copy the digest proven healthy in one environment to another."""

from __future__ import annotations

from reconciler.cli.commands._agent import git_dir
from reconciler.cli.commands._common import add_repo_argument


def add_arguments(parser) -> None:
    parser.add_argument("service")
    parser.add_argument("--from", dest="source", required=True, metavar="ENV")
    parser.add_argument("--to", dest="target", required=True, metavar="ENV")
    add_repo_argument(parser)


def run(args) -> int:
    from reconciler.adapters import gitlog
    from reconciler.adapters import gitedit

    repo = gitlog.open_repo(git_dir(args.repo))
    commit, image = gitedit.promote(repo, args.service, args.source, args.target)
    print(f"{args.target}: {args.service} -> {image} (commit {commit[:12]})")
    return 0
