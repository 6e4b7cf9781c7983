"""reconciler revert: an ordinary commit undoing another, files kept as they are written."""

from __future__ import annotations

from reconciler.cli.commands._agent import git_dir
from reconciler.cli.commands._common import add_repo_argument


def add_arguments(parser) -> None:
    parser.add_argument("commit")
    parser.add_argument("--env", help="onto this environment's branch (default: the branch HEAD names)")
    add_repo_argument(parser)


def run(args) -> int:
    from reconciler.adapters import gitlog
    from reconciler.adapters import gitedit

    repo = gitlog.open_repo(git_dir(args.repo))
    if args.env:
        ref = gitlog.environment_branch(repo, args.env)
    else:
        ref = repo.references["HEAD"].target
    new = gitedit.revert(repo, args.commit, ref)
    print(f"{ref}: reverted {args.commit[:12]} in {new[:12]}")
    return 0
