"""reconciler demo: the product's story on the local sandbox, nothing typed by hand.

The sandbox comes up; the example environment repository is copied into a
bare repository with the hooks installed; the agent (``reconciler run``, its
own process) follows it; then three releases of an app that keeps its data in
the sandbox's PostgreSQL are pushed with ``git push`` from a work clone, one
after another:

1. release 1: the app and its table (a backup, then its migration);
2. release 2: an expand migration (a verified backup, ADD COLUMN);
3. release 3: never healthy, so rolled back on the hosts and reverted in git.

Each push is followed from the agent's log and ends on the attempt the engine
noted in git.  The demo ends with ``reconciler history`` and ``status`` and
leaves the agent running for the next push by hand; ``--stop`` stops it, and
a second ``reconciler demo`` stops it first and starts from a fresh copy.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

PUSH_TIMEOUT = 300.0  # per push, on two busy cores; the demo takes about a tenth of it when warm
SETTLE_TIMEOUT = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, default=3, help="sandbox hosts (default 3)")
    parser.add_argument("--stop", action="store_true", help="stop the agent a previous demo left running, and exit")


def answer_of(address: str, port: int, path: str = "/") -> str:
    """What a host serves, asked from this machine (sandbox addresses only)."""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=3) as response:
            return response.read().decode().strip()
    except OSError as exc:
        return f"(no answer: {exc})"


def run(args: argparse.Namespace) -> int:
    from reconciler.cli import demo
    from reconciler.sandbox import description, fleet as sandbox_fleet
    from reconciler.sandbox.layout import layout

    # Progress as it happens, also when the output is a pipe (CI, `make demo | tee`).
    sys.stdout.reconfigure(line_buffering=True)
    if args.stop:
        paths = demo.paths_for(description.load(layout().description))
        stopped = demo.stop_agent(paths)
        print(f"demo agent (pid {stopped.pid}) stopped" if stopped else "no demo agent is running")
        return 0
    started = time.monotonic()
    sandbox = sandbox_fleet.up(args.hosts)
    print(f"sandbox: {len(sandbox.hosts)} hosts up in {sandbox.elapsed_seconds:.1f}s, registry {sandbox.registry}, "
          f"state {sandbox.state_dir}")
    story = Story(sandbox, demo.paths_for(sandbox), started)
    return story.tell()


class Story:
    """The demo's steps, in order; each prints what it did."""

    def __init__(self, sandbox, paths, started: float) -> None:
        from reconciler.cli import demo

        self.sandbox, self.paths, self.started = sandbox, paths, started
        self.env = demo.DEMO_ENVIRONMENT
        self.demo = demo

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.1f}s"

    def tell(self) -> int:
        self.reset()
        self.prepare()
        self.start_agent()
        first = self.push_release(1, expect=("deployed",))
        self.show_database("after release 1")
        second = self.push_release(2, expect=("deployed",))
        self.show_database("after release 2")
        third = self.push_release(3, expect=("rolled-back",))
        self.after_rollback(third)
        self.finish()
        return 0

    # ------------------------------------------------------------ setting up

    def reset(self) -> None:
        from reconciler.sandbox import demo_app

        stopped = self.demo.stop_agent(self.paths)
        if stopped:
            print(f"demo: stopped the previous demo's agent (pid {stopped.pid})")
        self.paths.reset()
        removed = demo_app.remove_environment_containers(self.sandbox, self.env)
        if removed:
            print(f"demo: removed {removed} container(s) of {self.env} a previous demo left")
        if not self.sandbox.database_dsn:
            from reconciler.errors import SandboxError

            raise SandboxError("the sandbox has no PostgreSQL (database_dsn is empty); run `reconciler sandbox up`")
        self.dsn = demo_app.reset_database(self.sandbox.database_dsn, self.demo.DEMO_DATABASE)
        print(f"demo: database {self.demo.DEMO_DATABASE} (re)created empty on the sandbox's PostgreSQL")
        self.releases = demo_app.push_releases(self.sandbox.registry)
        print(f"demo: the app's releases in the registry: "
              + ", ".join(ref.split("/", 1)[1].split("@")[0] for ref in self.releases.values()))

    def prepare(self) -> None:
        from reconciler.cli.main import main

        self.work = self.demo.init_repositories(self.paths)
        print(f"$ reconciler install-hooks --repo {self.paths.bare}")
        if main(["install-hooks", "--repo", str(self.paths.bare)]) != 0:
            from reconciler.errors import StalledError

            raise StalledError(f"demo: reconciler install-hooks --repo {self.paths.bare} failed")
        written = self.demo.copy_example(self.paths.work, self.sandbox, self.dsn, self.paths)
        self.pinned = self.demo.commit_all(
            self.work, "demo: the example environment, pinned to this sandbox\n\n"
                       "Copied from desired-state/ by `reconciler demo`: the hosts' keys, the images' digests, "
                       "and the database's DSN file (outside the repository).\n")
        print(f"environment repository: {self.paths.bare} (bare, hooks installed)")
        print(f"work clone:             {self.paths.work} @ {self.pinned[:12]} (the example, pinned to the sandbox)")
        for path in written:
            print(f"database DSN file:      {path} (0600, outside the repository)")
        self.provision_secrets()

    def provision_secrets(self) -> None:
        from reconciler.cli.commands._common import load_target

        target = load_target(argparse.Namespace(repo=str(self.paths.work), env=self.env, rev="HEAD",
                                                identity=self.sandbox.identity_file, worktree=False, timeout=10.0))
        with target.connect() as hosts:
            for made in self.demo.provision_secret_files(hosts, target.environment):
                print(f"provisioned secret file {made} (an operator's job on real hosts)")

    def start_agent(self) -> None:
        from reconciler.cli.demo_follow import Follower, LogTail

        self.agent = self.demo.start_agent(self.paths, self.sandbox, self.env)
        self.follow = Follower(LogTail(self.paths.log), self.paths.bare, self.env)
        self.follow.start()
        self.follow.wait_for("the agent to start", lambda: any(e.get("event") == "agent-started" for e in self.follow.seen),
                             SETTLE_TIMEOUT)
        print(f"agent: pid {self.agent.pid}, `reconciler run --repo {self.paths.bare} --env {self.env}`, "
              f"log {self.paths.log} (JSON lines)")

    # ------------------------------------------------------------ the pushes

    def push_release(self, number: int, *, expect: tuple[str, ...]):
        from reconciler.errors import StalledError
        from reconciler.sandbox.demo_app import RELEASES

        release = RELEASES[number - 1]
        image = self.releases[number]
        env_file = self.paths.work / "environments" / self.env / "environment.yaml"
        env_file.write_text(self.demo.release_text(env_file.read_text(), image, first=number == 1))
        commit = self.demo.commit_all(self.work, f"{self.env}: {release.story}\n\nweb runs {short_image(image)}.\n")
        print(f"\n== push {number}/3 at {self.elapsed()}: {release.story}")
        print(f"  commit {commit[:12]} in {self.paths.work}: services.web.image: {short_image(image)}"
              + (f", migrations: {{path: /migrations}}, health.deadline: {self.demo.DEMO_HEALTH_DEADLINE}"
                 if number == 1 else ""))
        if number == 1:
            print(f"  (this push also carries {self.pinned[:12]}, the pinned example; the agent deploys the newest commit)")
        print("  $ git push origin main")
        self.follow.start()
        pushed = self.demo.git_push(self.paths.work)
        for line in pushed.stderr.splitlines():
            if line.startswith("remote:"):
                print(f"  {line.rstrip()}")
        attempt = self.follow.wait_for(f"the agent's note on {commit[:12]}", lambda: self.follow.final_attempt(commit),
                                       PUSH_TIMEOUT)
        print(f"  => {self.outcome_line(attempt)}")
        if attempt.result not in expect:
            raise StalledError(f"demo: release {number} was to end {' or '.join(expect)}, the agent noted {attempt.result} "
                               f"({attempt.reason}: {attempt.message}); its log is {self.paths.log}")
        return commit, attempt

    def outcome_line(self, attempt) -> str:
        took = attempt.finished - attempt.started if attempt.finished and attempt.started else 0.0
        line = f"{attempt.result} {attempt.commit[:12]} on {','.join(attempt.hosts)} in {took:.1f}s (noted in git)"
        database = attempt.details.get("database") or {}
        if database.get("backup"):
            line += f"\n     backup: {database['backup']} (sha256 {str(database.get('backup_sha256'))[:12]}, verified)"
        if database.get("migrations"):
            line += f"\n     migrations applied: {', '.join(database['migrations'])}"
        if attempt.result not in ("deployed", "in-sync") and attempt.message:
            line += f"\n     {attempt.reason}: {attempt.message.splitlines()[0]}"
        if attempt.failed_check:
            line += f"\n     failed check: {'/'.join(attempt.failed_check)}"
        return line

    def show_database(self, when: str) -> None:
        from reconciler.sandbox import demo_app

        import psycopg

        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            cols = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                               "WHERE table_name = %s ORDER BY ordinal_position", (demo_app.TABLE,))]
            rows = conn.execute(f"SELECT count(*) FROM {demo_app.TABLE}").fetchone()[0] if cols else 0
        print(f"  database {when}: table {demo_app.TABLE}({', '.join(cols)}), {rows} rows")

    # ------------------------------------------------------------ the end

    def after_rollback(self, third) -> None:
        """The revert commit the agent pushed onto the branch, and the agent
        settled on it; what the hosts serve now."""
        from reconciler.adapters import gitlog
        from reconciler.errors import StalledError

        commit, attempt = third
        if not attempt.revert_commit:
            raise StalledError(f"demo: release 3 was rolled back but no revert commit was noted; its log is {self.paths.log}")
        repo = gitlog.open_repo(self.paths.bare)
        revert = repo[attempt.revert_commit]
        head = self.follow.branch_head()
        print(f"  git: main is at {head[:12]}: \"{revert.message.splitlines()[0]}\" by {revert.author.name}"
              + ("" if head == attempt.revert_commit else f" (the revert is {attempt.revert_commit[:12]})"))
        self.follow.wait_for(f"the agent to reconcile the revert {attempt.revert_commit[:12]}",
                             lambda: self.follow.reconciled(attempt.revert_commit), SETTLE_TIMEOUT)
        self.show_database("after the rollback (expand migrations are kept: release 2 works with them)")
        environment = self.target(head).environment
        for service in environment.services:
            for port in service.ports:
                for host_name in service.hosts:
                    host = environment.host(host_name)
                    print(f"  http://{host.address}:{port.host_port}/  {host_name}/{service.name}: "
                          f"{answer_of(host.address, port.host_port)}")

    def target(self, rev: str = "HEAD"):
        from reconciler.cli.commands._common import load_target

        return load_target(argparse.Namespace(repo=str(self.paths.bare), env=self.env, rev=rev,
                                              identity=self.sandbox.identity_file, worktree=False, timeout=10.0))

    def finish(self) -> None:
        from reconciler.cli.main import main

        self.demo.fast_forward(self.work)
        command = " ".join(self.demo.reconciler_command())
        for argv in (["history", "--repo", str(self.paths.bare), "--env", self.env],
                     ["status", "--repo", str(self.paths.bare), "--env", self.env, "--state", str(self.paths.state),
                      "--identity", self.sandbox.identity_file]):
            print(f"\n$ {command} {' '.join(argv)}", flush=True)
            code = main(argv)
            if code:
                print(f"(exit {code})")
        told = time.monotonic() - self.started
        print(f"""
demo: told in {told:.1f}s.  The agent keeps running (pid {self.agent.pid}) and deploys every push:
  cd {self.paths.work}
  $EDITOR environments/{self.env}/environment.yaml
      # e.g. release 1 again (it works on the expanded table): image: {self.releases[1]}
  git commit -am "{self.env}: my change" && git push
follow it:  tail -f {self.paths.log}    or    {command} history --repo {self.paths.bare} --env {self.env}
stop it:    {command} demo --stop    (or kill {self.agent.pid})""")


def short_image(reference: str) -> str:
    from reconciler.cli.demo_follow import short_image as short

    return short(reference)
