"""The demo's repositories and its agent: everything `reconciler demo` sets
up before it pushes, and what `reconciler demo --stop` undoes.

The example in ``desired-state/`` names the sandbox hosts but cannot know
their freshly generated host keys, its image digests depend on the busybox
the sandbox built the demo images from, and its ``database.dsn_file`` names
a path on a real agent's machine.  So the demo keeps its own copy under the
sandbox state dir, pins those three things in a first commit, and from then
on changes it only by commits pushed to a bare repository that the agent
follows, as a team would::

    <state>/demo/
        environments.git/   the bare repository: hooks installed, the agent's repository
        work/               the work clone the demo commits in and pushes from (yours next)
        state/              the agent's journal, locks and status (--state)
        backups/            the verified backups the agent takes (RECONCILER_BACKUP_DIR)
        production.dsn      the database's DSN, outside the repository, 0600
        agent.log           the agent's log, JSON lines
        agent.json          which process is the demo's agent (for --stop and the next demo)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pygit2

from reconciler import resources
from reconciler.errors import StalledError
from reconciler.sandbox.description import Sandbox

DEMO_ENVIRONMENT = "production"
DEMO_DATABASE = "reconciler_demo"
SERVICE = "web"
# Short enough that the never-healthy release fails within the demo's two
# minutes; the example's own 90 s suits a real service's slow start.
DEMO_HEALTH_DEADLINE = "12s"
_IMAGE_RE = re.compile(r"(?P<repo>[\w.:/-]+/demo/web):(?P<tag>[\w.-]+)@sha256:[0-9a-f]{64}")
STOP_GRACE = 60.0  # the agent lets a reconcile in progress finish before it exits


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def bare(self) -> Path:
        return self.root / "environments.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def agent_file(self) -> Path:
        return self.root / "agent.json"

    def dsn_file(self, env: str) -> Path:
        return self.root / f"{env}.dsn"

    def reset(self) -> None:
        """Remove what a previous demo left (its agent must be stopped first)."""
        # "environments" is the layout of the demo before it had an agent.
        for name in ("environments.git", "work", "state", "backups", "environments"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for path in (self.log, *self.root.glob("*.dsn")):
            path.unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)


def paths_for(sandbox: Sandbox) -> Paths:
    return Paths(Path(sandbox.state_dir) / "demo")


# ---------------------------------------------------------------- the demo's agent process


@dataclass(frozen=True)
class AgentProcess:
    pid: int
    repo: str
    log: str


def running_agent(paths: Paths) -> AgentProcess | None:
    """The demo's agent if it still runs: the pid recorded by the demo whose
    command line is still ``run --repo <our bare repository>`` (a pid reused
    by another program is not ours to signal)."""
    try:
        doc = json.loads(paths.agent_file.read_text())
        agent = AgentProcess(int(doc["pid"]), str(doc["repo"]), str(doc["log"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        paths.agent_file.unlink(missing_ok=True)  # half-written by a demo that died: no process to trust it for
        return None
    try:
        argv = Path(f"/proc/{agent.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in argv]
    return agent if "run" in words and agent.repo in words else None


def stop_agent(paths: Paths) -> AgentProcess | None:
    """SIGTERM the demo's agent and wait for it to exit; the one stopped, or None."""
    agent = running_agent(paths)
    if agent is None:
        paths.agent_file.unlink(missing_ok=True)
        return None
    try:
        os.kill(agent.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and running_agent(paths) is not None:
            time.sleep(0.2)
        if running_agent(paths) is not None:
            # Still in a reconcile after a minute: the journal is what makes a kill safe.
            os.kill(agent.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it exited between the look and the signal: stopped all the same
    paths.agent_file.unlink(missing_ok=True)
    return agent


def reconciler_command() -> list[str]:
    """How to call this installation's reconciler (the entry point beside the
    interpreter, else ``python -m reconciler``)."""
    exe = Path(sys.executable)
    entry = exe.parent / "reconciler"
    return [str(entry)] if entry.exists() else [str(exe), "-m", "reconciler"]


def start_agent(paths: Paths, sandbox: Sandbox, env: str) -> AgentProcess:
    """``reconciler run`` on the bare repository, in its own session (it
    outlives the demo and the terminal's Ctrl-C), logging JSON lines."""
    argv = [*reconciler_command(), "run", "--repo", str(paths.bare), "--env", env, "--state", str(paths.state),
            "--identity", sandbox.identity_file, "--log-format", "json"]
    environ = {**os.environ, "RECONCILER_BACKUP_DIR": str(paths.backups)}
    with paths.log.open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=environ, start_new_session=True, cwd=paths.root)
    agent = AgentProcess(proc.pid, str(paths.bare), str(paths.log))
    tmp = paths.agent_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": agent.pid, "repo": agent.repo, "log": agent.log, "argv": argv}) + "\n")
    tmp.replace(paths.agent_file)
    return agent


# ---------------------------------------------------------------- the repositories


def pin_sandbox(text: str, sandbox: Sandbox) -> str:
    """The example YAML with each demo image pinned to the sandbox's digest."""

    def repin(match: re.Match) -> str:
        return sandbox.images.get(match.group("tag"), match.group(0))

    return _IMAGE_RE.sub(repin, text)


def pin_docker_sockets(text: str, sandbox: Sandbox) -> str:
    """Each sandbox host's entry with ``docker_socket:`` where its engine
    listens (each host has its own, not /var/run/docker.sock), so the agent
    opens a channel straight to it instead of falling back to a
    ``docker system dial-stdio`` process.  Inserted in the text, in the
    entry's own style (flow ``{...}`` or block), comments kept."""
    from ruamel.yaml import YAML

    doc = YAML(typ="rt").load(text)
    hosts = doc.get("hosts") if doc else None
    if not isinstance(hosts, dict):
        return text
    sockets = {h.name: h.docker_socket for h in sandbox.hosts}
    lines = text.splitlines(keepends=True)
    inserts = []  # (line, column or None, text), applied bottom-up so positions stay right
    for name, entry in hosts.items():
        if name not in sockets or not isinstance(entry, dict) or "docker_socket" in entry:
            continue
        if entry.fa.flow_style():
            line = hosts.lc.key(name)[0]
            close = lines[line].split(" #", 1)[0].rfind("}")
            if close < 0:
                continue  # a flow mapping over several lines: left as it is
            inserts.append((line, close, f", docker_socket: {sockets[name]}"))
        else:
            # Before the first key: its line starts the mapping, whatever spans the last one.
            line, col = entry.lc.key(next(iter(entry)))
            inserts.append((line, None, " " * col + f"docker_socket: {sockets[name]}\n"))
    for line, col, piece in sorted(inserts, reverse=True):
        if col is None:
            lines.insert(line, piece)
        else:
            lines[line] = lines[line][:col] + piece + lines[line][col:]
    return "".join(lines)


def _dsn_file_of(text: str) -> bool:
    from ruamel.yaml import YAML

    doc = YAML(typ="rt").load(text)
    return bool(doc) and isinstance(doc.get("database"), dict) and "dsn_file" in doc["database"]


def init_repositories(paths: Paths) -> pygit2.Repository:
    """The bare repository (the agent's) and the work clone (the pusher's),
    both empty; the work clone's ``origin`` is the bare one."""
    pygit2.init_repository(str(paths.bare), bare=True, initial_head="main")
    work = pygit2.init_repository(str(paths.work), initial_head="main")
    work.remotes.create("origin", str(paths.bare))
    work.config["user.name"] = "demo user"
    work.config["user.email"] = "demo@reconciler.invalid"
    work.config["branch.main.remote"] = "origin"
    work.config["branch.main.merge"] = "refs/heads/main"
    return work


def copy_example(work: Path, sandbox: Sandbox, dsn: str, paths: Paths, example: Path | None = None) -> list[str]:
    """The example copied into the work clone and pinned to the sandbox: host
    keys, image digests, each host's engine socket, and each declared
    ``database.dsn_file`` pointed at a file the demo writes outside the repository.  Returns the DSN files written."""
    from reconciler.adapters.gitedit import set_scalar

    example = resources.path("desired-state") if example is None else example
    shutil.copytree(example, work, dirs_exist_ok=True)
    keys = Path(sandbox.known_hosts_file).read_text()
    written = []
    for env_dir in sorted((work / "environments").iterdir()):
        (env_dir / "known_hosts").write_text("# Pinned by `reconciler demo` from the local sandbox.\n" + keys)
        for yaml_file in sorted(env_dir.rglob("*.yaml")):
            text = pin_sandbox(yaml_file.read_text(), sandbox)
            if yaml_file.name == "environment.yaml":
                text = pin_docker_sockets(text, sandbox)
            if yaml_file.name == "environment.yaml" and _dsn_file_of(text):
                dsn_file = paths.dsn_file(env_dir.name)
                dsn_file.touch(mode=0o600)
                dsn_file.write_text(dsn + "\n")
                text = set_scalar(text, ("database", "dsn_file"), str(dsn_file))
                written.append(str(dsn_file))
            yaml_file.write_text(text)
    return written


def commit_all(repo: pygit2.Repository, message: str) -> str:
    """Commit the work clone's whole working tree on its branch; the new id."""
    repo.index.add_all()
    repo.index.write()
    tree = repo.index.write_tree()
    sig = repo.default_signature
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", sig, sig, message, tree, parents))


def release_text(text: str, image: str, *, first: bool) -> str:
    """``environment.yaml`` with the web service on ``image``; for the first
    release also the migrations it ships and the demo's health deadline.
    Edited in place (comments and layout kept), as a person would."""
    from ruamel.yaml import YAML

    from reconciler.adapters.gitedit import set_scalar

    text = set_scalar(text, ("services", SERVICE, "image"), image)
    if not first:
        return text
    service = YAML(typ="rt").load(text)["services"][SERVICE]
    if "deadline" not in (service.get("health") or {}):
        raise StalledError(f"demo: the example's services.{SERVICE}.health has no deadline to shorten")
    text = set_scalar(text, ("services", SERVICE, "health", "deadline"), DEMO_HEALTH_DEADLINE)
    if "migrations" in service:
        raise StalledError(f"demo: the example's services.{SERVICE} already has migrations; the demo adds them")
    line, col = service.lc.key("image")
    lines = text.splitlines(keepends=True)
    lines.insert(line + 1, " " * col + "migrations: {path: /migrations}   # the app ships its SQL files there\n")
    return "".join(lines)


def git_push(work: Path) -> subprocess.CompletedProcess:
    """A real ``git push``: the bare repository's pre-receive hook validates
    the push and its post-receive hook nudges the agent; libgit2's local push
    runs no hooks, so this is the one place the demo runs git itself."""
    done = subprocess.run(["git", "push", "origin", "main"], cwd=work, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if done.returncode != 0:
        raise StalledError(f"demo: git push from {work} failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return done


def fast_forward(work: pygit2.Repository) -> str | None:
    """Fetch the bare repository's branch (the agent's revert commit) into the
    work clone and fast-forward it, so the next push by hand needs no pull."""
    work.remotes["origin"].fetch(["+refs/heads/main:refs/remotes/origin/main",
                                  "+refs/notes/reconciler:refs/notes/reconciler"])
    remote = work.references.get("refs/remotes/origin/main")
    if remote is None:
        return None
    target = remote.target
    if target == work.head.target:
        return str(target)
    if not work.descendant_of(target, work.head.target):
        raise StalledError(f"demo: {work.workdir} has commits the agent's repository lacks; pull by hand")
    work.checkout_tree(work[target], strategy=pygit2.enums.CheckoutStrategy.SAFE)
    work.head.set_target(target)
    return str(target)
