"""The story `reconciler demo` tells, step by step, each step printing what it did.

1. a fresh start: the previous demo's agent stopped, its repositories, the
   environment's containers and the app's database removed;
2. the example copied into a work clone and pinned to the sandbox (a commit),
   a bare repository with the hooks installed, the agent started on it;
3. three pushes, one after another, each followed from the agent's log until
   the engine's attempt appears in the commit's note:
   release 1 (the app and its table), release 2 (an expand migration, with a
   verified backup first), release 3 (never healthy: rolled back on the
   hosts, and the agent's revert commit on the branch);
4. ``reconciler history`` and ``reconciler status``, and how to go on by hand.

A push that does not end the way the story says raises a StalledError naming
what the agent noted instead and where its log is.
"""

from __future__ import annotations

import argparse
import time
import urllib.request

import psycopg

from reconciler.adapters import gitlog
from reconciler.cli import demo
from reconciler.cli.commands._common import load_target
from reconciler.cli.demo_follow import Follower, LogTail, short_image
from reconciler.cli.main import main
from reconciler.core.record import Attempt
from reconciler.errors import SandboxError, StalledError
from reconciler.sandbox import demo_app

PUSH_TIMEOUT = 300.0  # per push, on two busy cores; a warm machine takes about 15 s for the slowest
SETTLE_TIMEOUT = 120.0


def answer_of(address: str, port: int, path: str = "/") -> str:
    """What a host serves, asked from this machine (sandbox addresses only)."""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=3) as response:
            return response.read().decode().strip()
    except OSError as exc:
        return f"(no answer: {exc})"


def outcome_line(attempt: Attempt) -> str:
    """What the engine noted in git about a push, as the demo prints it (pure)."""
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


class Story:
    def __init__(self, sandbox, paths: demo.Paths, started: float) -> None:
        self.sandbox, self.paths, self.started = sandbox, paths, started
        self.env = demo.DEMO_ENVIRONMENT

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.1f}s"

    def tell(self) -> int:
        self.reset()
        self.prepare()
        self.start_agent()
        self.push_release(1, expect=("deployed",))
        self.show_database("after release 1")
        self.push_release(2, expect=("deployed",))
        self.show_database("after release 2")
        self.after_rollback(self.push_release(3, expect=("rolled-back",)))
        self.finish()
        return 0

    # ------------------------------------------------------------ setting up

    def reset(self) -> None:
        stopped = demo.stop_agent(self.paths)
        if stopped:
            print(f"demo: stopped the previous demo's agent (pid {stopped.pid})")
        self.paths.reset()
        removed = demo_app.remove_environment_containers(self.sandbox, self.env)
        if removed:
            print(f"demo: removed {removed} container(s) of {self.env} a previous demo left")
        if not self.sandbox.database_dsn:
            raise SandboxError("the sandbox has no PostgreSQL (database_dsn is empty); run `reconciler sandbox up`")
        self.dsn = demo_app.reset_database(self.sandbox.database_dsn, demo.DEMO_DATABASE)
        print(f"demo: database {demo.DEMO_DATABASE} (re)created empty on the sandbox's PostgreSQL")
        self.releases = demo_app.push_releases(self.sandbox.registry)
        print("demo: the app's releases in the registry: " + ", ".join(short_image(r) for r in self.releases.values()))

    def prepare(self) -> None:
        self.work = demo.init_repositories(self.paths)
        print(f"$ reconciler install-hooks --repo {self.paths.bare}")
        if main(["install-hooks", "--repo", str(self.paths.bare)]) != 0:
            raise StalledError(f"demo: reconciler install-hooks --repo {self.paths.bare} failed")
        written = demo.copy_example(self.paths.work, self.sandbox, self.dsn, self.paths)
        self.pinned = demo.commit_all(
            self.work, "demo: the example environment, pinned to this sandbox\n\n"
                       "Copied from desired-state/ by `reconciler demo`: the hosts' keys, the images' digests, "
                       "and the database's DSN file (outside the repository).\n")
        print(f"environment repository: {self.paths.bare} (bare, hooks installed)")
        print(f"work clone:             {self.paths.work} @ {self.pinned[:12]} (the example, pinned to the sandbox)")
        for path in written:
            print(f"database DSN file:      {path} (0600, outside the repository)")
        for made in demo_app.provision_secret_files(self.target(self.paths.work).environment):
            print(f"provisioned secret file {made} (an operator's job on real hosts)")

    def target(self, repo, rev: str = "HEAD"):
        return load_target(argparse.Namespace(repo=str(repo), env=self.env, rev=rev,
                                              identity=self.sandbox.identity_file, worktree=False, timeout=10.0))

    def start_agent(self) -> None:
        self.agent = demo.start_agent(self.paths, self.sandbox, self.env)
        self.follow = Follower(LogTail(self.paths.log), self.paths.bare, self.env)
        self.follow.start()
        self.follow.wait_for("the agent to start", lambda: self.follow.logged("agent-started"), SETTLE_TIMEOUT)
        print(f"agent: pid {self.agent.pid}, `reconciler run --repo {self.paths.bare} --env {self.env}`, "
              f"log {self.paths.log} (JSON lines)")

    # ------------------------------------------------------------ the pushes

    def push_release(self, number: int, *, expect: tuple[str, ...]) -> Attempt:
        release = demo_app.RELEASES[number - 1]
        image = self.releases[number]
        env_file = self.paths.work / "environments" / self.env / "environment.yaml"
        env_file.write_text(demo.release_text(env_file.read_text(), image, first=number == 1))
        commit = demo.commit_all(self.work, f"{self.env}: {release.story}\n\nweb runs {short_image(image)}.\n")
        print(f"\n== push {number}/3 at {self.elapsed()}: {release.story}")
        changed = f"services.web.image: {short_image(image)}"
        if number == 1:
            changed += f", migrations: {{path: /migrations}}, health.deadline: {demo.DEMO_HEALTH_DEADLINE}"
        print(f"  commit {commit[:12]} in {self.paths.work}: {changed}")
        if number == 1:
            print(f"  (this push also carries {self.pinned[:12]}, the pinned example; the agent deploys the newest commit)")
        print("  $ git push origin main")
        self.follow.start()
        pushed = demo.git_push(self.paths.work)
        for line in pushed.stderr.splitlines():
            if line.startswith("remote:"):
                print(f"  {line.rstrip()}")
        attempt = self.follow.wait_for(f"the agent's note on {commit[:12]}", lambda: self.follow.final_attempt(commit),
                                       PUSH_TIMEOUT)
        print(f"  => {outcome_line(attempt)}")
        if attempt.result not in expect:
            raise StalledError(f"demo: release {number} was to end {' or '.join(expect)}, the agent noted {attempt.result} "
                               f"({attempt.reason}: {attempt.message}); its log is {self.paths.log}")
        return attempt

    def show_database(self, when: str) -> None:
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            cols = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                               "WHERE table_name = %s ORDER BY ordinal_position", (demo_app.TABLE,))]
            rows = conn.execute(f"SELECT count(*) FROM {demo_app.TABLE}").fetchone()[0] if cols else 0
        print(f"  database {when}: table {demo_app.TABLE}({', '.join(cols)}), {rows} rows")

    # ------------------------------------------------------------ the end

    def after_rollback(self, attempt: Attempt) -> None:
        """The agent's revert commit on the branch, the agent settled on it,
        the database as the rollback left it, what the hosts serve."""
        if not attempt.revert_commit:
            raise StalledError(f"demo: release 3 was rolled back but no revert commit was noted; its log is {self.paths.log}")
        revert = gitlog.open_repo(self.paths.bare)[attempt.revert_commit]
        head = self.follow.branch_head()
        print(f"  git: main is at {head[:12]}: \"{revert.message.splitlines()[0]}\" by {revert.author.name}"
              + ("" if head == attempt.revert_commit else f" (the revert is {attempt.revert_commit[:12]})"))
        self.follow.wait_for(f"the agent to reconcile the revert {attempt.revert_commit[:12]}",
                             lambda: self.follow.reconciled(attempt.revert_commit), SETTLE_TIMEOUT)
        self.show_database("after the rollback (expand migrations are kept: release 2 works with them)")
        environment = self.target(self.paths.bare, head).environment
        for service in environment.services:
            for port in service.ports:
                for host_name in service.hosts:
                    host = environment.host(host_name)
                    print(f"  http://{host.address}:{port.host_port}/  {host_name}/{service.name}: "
                          f"{answer_of(host.address, port.host_port)}")

    def finish(self) -> None:
        demo.fast_forward(self.work)
        command = " ".join(demo.reconciler_command())
        for argv in (["history", "--repo", str(self.paths.bare), "--env", self.env],
                     ["status", "--repo", str(self.paths.bare), "--env", self.env, "--state", str(self.paths.state),
                      "--identity", self.sandbox.identity_file]):
            print(f"\n$ {command} {' '.join(argv)}")
            code = main(argv)
            if code:
                print(f"(exit {code})")
        print(f"""
demo: told in {time.monotonic() - self.started:.1f}s.  The agent keeps running (pid {self.agent.pid}) and deploys every push:
  cd {self.paths.work}
  $EDITOR environments/{self.env}/environment.yaml
      # e.g. release 1 again (it works on the expanded table): image: {self.releases[1]}
  git commit -am "{self.env}: my change" && git push
follow it:  tail -f {self.paths.log}    or    {command} history --repo {self.paths.bare} --env {self.env}
stop it:    {command} demo --stop    (or kill {self.agent.pid})""")
