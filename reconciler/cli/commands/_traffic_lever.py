"""The traffic levers (``maintenance``, ``pause``, ``resume``): a commit, then the engine.

Like ``reconciler rollback``, a lever never acts on the hosts by a second
path: it writes the desired state into the environment repository (the
service's ``expose.maintenance`` or ``expose.pause``, comments kept by
ruamel's round trip), commits it on the environment's branch, and runs that
commit through the engine as ``apply`` does (lock, journal, plan steps, a
note in git).  So ``git log`` says who put a service in maintenance and
when, and the agent's next reconcile of the branch keeps it that way.

The file is checked with the product's bounded parser (``core.schema``, the
one ``validate`` and the pre-receive hook use) twice: the branch head before
the round-trip loader reads it, and the edited text before it is committed.
Either refusal names ``file:line:col`` and nothing is committed.
"""

from __future__ import annotations

import dataclasses
import io
import os

from reconciler.cli.commands._common import add_target_arguments


def add_arguments(parser, *, with_page: bool = False, with_deadline: bool = False, with_state: bool = False) -> None:
    if with_state:
        parser.add_argument("switch", choices=("on", "off"), help="on: answer 503 with the page; off: serve again")
    parser.add_argument("service", help="the exposed service")
    if with_page:
        parser.add_argument("--page", help="the HTML answered with the 503 (default: the router's page)")
    if with_deadline:
        parser.add_argument("--deadline", default="30s", help="how long each held request waits before its 503 (default 30s)")
    add_target_arguments(parser)
    parser.add_argument("--yes", action="store_true", help="apply without asking")
    parser.add_argument("--signing-key", default=os.environ.get("RECONCILER_SIGNING_KEY"),
                        help="SSH private key to sign the lever's commit (and its notes) with; needed under "
                             "policy.require_signed (default: $RECONCILER_SIGNING_KEY)")


def edit_expose(text: str, keys: tuple[str, ...], field: str, value) -> str:
    """``text`` with ``expose.<field>`` of the service at ``keys`` set to ``value`` (None: removed)."""
    from ruamel.yaml import YAML

    from reconciler.errors import StalledError

    round_trip = YAML(typ="rt")  # round-trip: plain data only, comments kept
    round_trip.preserve_quotes = True
    round_trip.width = 4096  # no re-wrapping: the lines the lever does not edit stay as written
    # Only ever a file the bounded parser accepted (``lever`` checks it first),
    # so the round-trip loader sees plain data within the schema's bounds.
    data = round_trip.load(text)
    node = data
    for key in keys:
        node = node[key]
    expose = node.get("expose") if hasattr(node, "get") else None
    if expose is None:
        raise StalledError(f"service {keys[-1]}: not exposed (no expose:), so its router cannot {field}")
    if value is None:
        expose.pop(field, None)
    else:
        expose[field] = value
    out = io.StringIO()
    round_trip.dump(data, out)
    return out.getvalue()


def lever(args, field: str, value, what: str) -> int:
    """Commit ``expose.<field> = value`` for ``args.service`` (None removes it), then apply that commit."""
    import pygit2

    from reconciler.adapters import gitedit, gitlog, source
    from reconciler.cli.commands._agent import git_dir
    from reconciler.cli.commands._common import choose_env
    from reconciler.engine.recording import cli_actor

    env = choose_env(args)
    repo = gitlog.open_repo(git_dir(args.repo))
    branch = gitlog.environment_branch(repo, env)
    head = repo.references[branch].peel(pygit2.Commit)
    path, image_keys = gitedit.service_file(repo, head, env, args.service)
    snapshot = source.snapshot_commit(repo.path, str(head.id))
    _validated(snapshot, env, f"the branch head {str(head.id)[:12]}")
    text = snapshot.files[path].decode("utf-8")
    new_text = edit_expose(text, image_keys[:-1], field, value)
    if new_text != text:
        _validated(dataclasses.replace(snapshot, files={**snapshot.files, path: new_text.encode("utf-8")}, revision=None),
                   env, f"the edit of {path}")
        message = (f"{what}: {args.service} in {env}\n\n`reconciler {args.command}` by {cli_actor()} "
                   f"sets expose.{field} of {args.service}.\n")
        commit = _commit(repo, branch, path, new_text, message, args.signing_key)
        print(f"committed {commit[:12]}: {what.lower()} for {args.service}")
        args.rev = commit
    else:
        print(f"{env}: {args.service} already says so; applying the branch head")
        args.rev = str(head.id)
    return _apply(args)


def _validated(snapshot, env: str, what: str) -> None:
    """``InvalidDesiredState`` (every problem, as ``file:line:col``) unless ``env`` validates in ``snapshot``."""
    from reconciler.core import schema
    from reconciler.errors import InvalidDesiredState

    problems = schema.validate(snapshot, env)
    if problems:
        raise InvalidDesiredState([*problems, f"{env}: {what} does not validate; nothing committed"])


def _commit(repo, branch: str, path: str, text: str, message: str, signing_key: str | None) -> str:
    """The lever's commit on ``branch`` (signed with ``signing_key`` when given), no checkout needed."""
    from reconciler.adapters import gitlog
    from reconciler.adapters import gitedit

    return gitedit.commit_files(repo, branch, {path: text}, message, gitlog.agent_signature(), signing_key)


LOCK_WAIT = 300.0  # seconds: the agent may be deploying this very commit (it saw the branch move)


def _apply(args) -> int:
    """``apply`` of the lever's commit, through the engine (``_engine``, as ``apply`` runs it);
    while the agent holds the environment's lock (it picked the commit up first), wait and
    try again: the second run finds the work done (in sync) or finishes it."""
    import time

    from reconciler.cli.commands import _engine
    from reconciler.cli.commands._common import finish, load_target
    from reconciler.cli.progress import for_terminal
    from reconciler.core import report
    from reconciler.engine.recording import cli_actor
    from reconciler.engine.run import Request, run as run_engine

    target = load_target(args)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        ctx = _engine.context(args, target, observers=(for_terminal(),), signing_key=args.signing_key,
                              confirm=_engine.asker(args, args.command, "apply these changes?",
                                                    lambda plan: print(report.plan_text(plan))))
        result = run_engine(ctx, Request(target.environment.name, "deploy", commit=target.revision, trigger="cli",
                                         actor=cli_actor(), force=True))
        if result.result != "locked" or time.monotonic() >= deadline:
            break
        print(f"{target.environment.name}: locked ({result.message}); waiting for it to finish")
        time.sleep(2.0)
    code = finish(result, "deploy")
    _engine.print_result(target, result, "deploy")
    return code
