"""The agent as the fleet tests run it: `reconciler run` as its own process on
a bare repository with the hooks installed, its JSON log appended to a file;
and the user's side of that repository (a work tree that pushes on top of
the agent's own commits).

    agent = AgentProcess(bare, ENV, fleet.identity_file, root / "agent.log", state=root / "state")
    agent.start()
    ... agent.kill()      # SIGKILL, as a crash
    ... agent.start()     # the same log, appended to
    agent.wait_for_event("reconcile-end", commit=commit[:12])
    agent.stop()          # SIGTERM (SIGKILL when it does not end)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from reconciler.cli.main import main
from tests.pushing import git, wait_for


class AgentProcess:
    """One agent (started again after a kill or a stop, on the same log)."""

    def __init__(self, repo: Path, env: str | None, identity: str, log: Path, *, state: Path | None = None,
                 args: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> None:
        """``env``: None runs every environment of the repository; ``args``: more options of
        ``reconciler run``; ``environ``: variables added to this process's environment."""
        self.env, self.log = env, log
        self.argv = [sys.executable, "-m", "reconciler", "run", "--repo", str(repo),
                     *(("--env", env) if env else ()), "--identity", identity,
                     *(("--state", str(state)) if state is not None else ()), "--log-format", "json", *args]
        self.environ = {**os.environ, **environ} if environ else None
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------ the process
    def start(self) -> "AgentProcess":
        assert self.proc is None, "the agent is running already"
        with self.log.open("a") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.environ)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the agent is not running"
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean-up of the agent's own."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 60 s); nothing when it is not running."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> "AgentProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ its log
    def text(self, tail: int | None = None) -> str:
        """The log as written (its last ``tail`` characters), for assertion messages."""
        text = self.log.read_text() if self.log.exists() else ""
        return text[-tail:] if tail else text

    def events(self, name: str | None = None, **fields) -> list[dict]:
        """``log_events`` of this agent's log."""
        return log_events(self.log, name, **fields)

    def lines(self) -> list[dict]:
        """Every line of the log, parsed: a line that is not JSON fails the test."""
        out = []
        for number, line in enumerate(self.text().splitlines(), 1):
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"agent log line {number} is not JSON: {line!r}") from None
        return out

    def raw_lines(self) -> list[str]:
        """The lines of the log that are not JSON."""
        raw = []
        for line in self.text().splitlines():
            try:
                json.loads(line)
            except ValueError:
                raw.append(line)
        return raw

    def wait_for_event(self, name: str, timeout: float = 180.0, **fields) -> dict:
        """The first ``name`` line with ``fields`` (polled; the busy machine's generous deadline),
        or the test fails with the log's end."""
        found = wait_for(lambda: self.events(name, **fields), timeout)
        assert found, f"no {name} {fields or ''} in {timeout:.0f}s:\n{self.text(4000)}"
        return found[0]


def log_events(log: Path, name: str | None = None, **fields) -> list[dict]:
    """The JSON lines of an agent's ``log`` named ``name`` (every one with None) whose ``fields``
    have these values; a line that is not JSON is left out (``AgentProcess.raw_lines`` has them)."""
    out = []
    for line in (log.read_text() if log.exists() else "").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and (name is None or event.get("event") == name) \
                and all(event.get(k) == v for k, v in fields.items()):
            out.append(event)
    return out


# ---------------------------------------------------------------- the user's side

def user_repos(root: Path, known_hosts: str, *envs: str) -> tuple[Path, Path]:
    """(work tree, bare repository with the hooks) under ``root``; the work tree has each
    environment's directory with ``known_hosts`` and no commit yet."""
    import pygit2

    work, bare = root / "work", root / "env.git"
    for env in envs:
        (work / "environments" / env).mkdir(parents=True)
        (work / "environments" / env / "known_hosts").write_text(Path(known_hosts).read_text())
    pygit2.init_repository(str(work), initial_head="main")
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    return work, bare


def push_on_top(work: Path, bare: Path, make_commit: Callable[[], str | None]) -> str:
    """``make_commit()`` in ``work`` on the branch as the bare repository has it (the agent
    commits too: reverts, the levers' commits), pushed as a user pushes; the commit's id."""
    if git(work, "fetch", "-q", str(bare), "main", check=False).returncode == 0:
        git(work, "reset", "-q", "--hard", "FETCH_HEAD")
    commit = make_commit()
    git(work, "push", "-q", str(bare), "HEAD:main")
    return commit or git(work, "rev-parse", "HEAD").stdout.strip()


def lever(repo: Path, env: str, identity: str, *argv: str, attempts: int = 30) -> subprocess.CompletedProcess:
    """``reconciler <argv> --repo --env --identity --yes`` from a shell, as a user runs a lever;
    while the agent holds the environment's lock (exit 4: it is noting what it just did),
    again 3 s later, ``attempts`` times at most."""
    import time

    cli = [sys.executable, "-m", "reconciler", *argv, "--repo", str(repo), "--env", env, "--identity", identity, "--yes"]
    for _ in range(attempts):
        done = subprocess.run(cli, capture_output=True, text=True)
        if done.returncode != 4:
            break
        time.sleep(3)
    return done
