"""reconciler run: the agent."""

from __future__ import annotations

import os
import signal
import threading

from reconciler.cli import exitcodes
from reconciler.cli.commands._agent import add_repo_arguments, git_dir, publish_state, state_location
from reconciler.cli.commands._common import add_identity_arguments, require_identity


def add_arguments(parser) -> None:
    add_repo_arguments(parser)
    parser.add_argument("--env", action="append", help="reconcile only this environment (repeatable; default: all on the branch)")
    add_identity_arguments(parser)
    parser.add_argument("--socket", help="nudge socket the post-receive hook writes to (default: <git dir>/reconciler.sock)")
    parser.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("RECONCILER_LOG_FORMAT", "text"))
    parser.add_argument("--once", action="store_true",
                        help="reconcile each environment once and exit with the worst code (3 one rolled back, 4 one frozen or locked)")
    parser.add_argument("--no-watch", action="store_true", help="do not watch the refs with inotify (nudges and timers only)")
    parser.add_argument("--remote", help="also fetch this remote on a jittered interval (teams whose repository is hosted elsewhere)")
    parser.add_argument("--fetch-interval", type=float, default=60.0)
    parser.add_argument("--keep-connections", type=float, default=None, metavar="SECONDS",
                        help="keep host connections open this long unused (default: timeouts.keep_connections in the "
                             "settings file, else 600: across drift checks; each open connection costs a little idle CPU)")
    parser.add_argument("--webhook-port", type=int, help="with --remote: listen on PORT for POST /hook to fetch at once")
    parser.add_argument("--webhook-address", default="127.0.0.1",
                        help="where the webhook listens (default 127.0.0.1; beyond loopback only with --webhook-secret-file)")
    parser.add_argument("--webhook-secret-file", default=os.environ.get("RECONCILER_WEBHOOK_SECRET_FILE"),
                        help="the forge's webhook secret (GitHub/Gitea HMAC, GitLab token); unsigned requests get 401")
    parser.add_argument("--allowed-signers", help="OpenSSH allowed_signers for policy.require_signed "
                                                  "(default: $RECONCILER_ALLOWED_SIGNERS, git config reconciler.allowedSigners)")
    parser.add_argument("--gpg-keyring", help="OpenPGP keyring for policy.require_signed "
                                              "(default: $RECONCILER_GPG_KEYRING, git config reconciler.gpgKeyring)")
    parser.add_argument("--ssh-revoked", help="revoked SSH signing keys (ssh-keygen -Y verify -r)")
    parser.add_argument("--age-key", default=None,
                        help="the agent's age identity file for encrypted secrets (default: $RECONCILER_AGE_KEY)")
    parser.add_argument("--signing-key", default=os.environ.get("RECONCILER_SIGNING_KEY"),
                        help="SSH private key the agent signs its revert commits and notes commits with "
                             "(put its public key in allowed_signers)")


def run(args) -> int:
    from reconciler.adapters import fleet, gitlog, hook_files, source
    from reconciler.core import schema
    from reconciler.agent.loop import Agent, EnvLoop, make_logger
    from reconciler.engine.run import Context, reconcile
    from reconciler.adapters import signatures
    from reconciler.agent.triggers import NudgeSocket, RefWatcher, RemoteTracker, Webhook, default_socket_path
    from reconciler.agent.webhook_auth import read_secret

    require_identity(args)
    from reconciler.adapters import secrets as secret_values

    secret_values.use_identity_file(args.age_key)
    # Read before anything starts: a bad secret file fails the agent at once.
    secret = read_secret(args.webhook_secret_file) if args.webhook_secret_file else None
    if args.signing_key:
        # So is a signing key ssh-keygen cannot use (missing, or with a
        # passphrase): the agent would otherwise find out at its first note.
        from reconciler.adapters import gitsign

        gitsign.sign("reconciler: signing key check\n", args.signing_key)
    from reconciler.adapters.liblog import route_library_logs

    log = make_logger(args.log_format)
    # paramiko and the rest log through `logging`: their lines go through the
    # agent's logger too, so the log stays one format (JSON lines with --log-format json).
    route_library_logs(log)
    gdir = git_dir(args.repo)
    location = state_location(args)
    state = location.path
    state.mkdir(parents=True, exist_ok=True)
    publish_state(gdir, location)  # so that `reconciler lock` from any shell finds this state
    for hook in hook_files.installed(gdir):
        if hook.problem():
            log("hooks-outdated", hook=hook.name, state=hook.state, message=hook.problem())
    # Connections stay open between reconciles: a drift check then costs
    # an Engine API call per host, not an SSH handshake.
    connections = fleet.ConnectionCache(identity_file=args.identity, timeout=args.timeout, idle=args.keep_connections, log=log)
    trust = signatures.Trust.from_environment(gitlog.open_repo(gdir), allowed_signers=args.allowed_signers,
                                              gpg_keyring=args.gpg_keyring, ssh_revoked=args.ssh_revoked)
    ctx = Context(repo=gdir, state_dir=state, open_hosts=connections.open, close_hosts=connections.release, log=log,
                  trust=trust, signing_key=args.signing_key)

    def environments() -> list[str]:
        if args.env:
            return list(args.env)
        return list(schema.list_environments(source.snapshot_commit(gdir, "HEAD")))

    def head(env: str) -> str | None:
        repo = gitlog.open_repo(gdir)
        return gitlog.branch_head(repo, gitlog.environment_branch(repo, env))

    if args.once:
        codes = []
        for env in environments():
            result = reconcile(ctx, env, reason="manual")
            log("reconcile-end", environment=env, commit=result.commit, result=result.result, kind=result.kind, reason=result.reason, message=result.message or None)
            codes.append(exitcodes.of_result(result, "deploy"))
        return exitcodes.worst(codes)

    agent = Agent(environments, lambda env: EnvLoop(env, lambda e, reason: reconcile(ctx, e, reason=reason), head, log=log), log)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.refresh()
    sock = NudgeSocket(args.socket or default_socket_path(gdir), agent.trigger, repo_dir=gdir).start()
    watcher = None if args.no_watch else RefWatcher(gdir, agent.trigger).start()
    tracker = RemoteTracker(gdir, args.remote, args.fetch_interval, log, agent.trigger).start() if args.remote else None
    webhook = (Webhook(args.webhook_port, tracker.poke, args.webhook_address, secret=secret, log=log).start()
               if tracker and args.webhook_port else None)
    from reconciler.agent import api
    from reconciler.agent.observer import Observer

    # plan and status ask here for the hosts' state, observed on the connections kept above.
    server = api.start(state, Observer(gdir, state, connections, environments, log), log)
    log("agent-started", repo=str(gdir), state=str(state), state_source=location.source, socket=str(sock.path),
        api=str(server.path) if server else None, pid=os.getpid())
    try:
        stop.wait()  # blocks; the loops and triggers run in their threads
    finally:
        log("agent-stopping")
        for part in (server, webhook, tracker, watcher, sock):
            if part is not None:
                part.stop()
        agent.stop()  # lets a reconcile in progress finish; the journal covers a kill
        connections.close_all()
    return 0
