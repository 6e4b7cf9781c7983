"""Issue 10, item 7: `reconciler lock` from a plain shell freezes the agent
started the way the shipped systemd unit starts it.

The agent's environment is read from systemd/reconciler.service (its
StateDirectory=, Environment= and ExecStart= lines) and from
systemd/reconciler.env.example (its EnvironmentFile), so this test breaks
when the unit changes in a way that splits the state again.  The CLI runs
from a shell in the repository with no RECONCILER_* variable and no
$STATE_DIRECTORY, as a user on the agent's machine would.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from tests.agentproc import log_events
from tests.envrepo import containers, make_env_repo, remove_containers, serving
from tests.pushing import git, wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "reconciler.service"
ENV_EXAMPLE = ROOT / "systemd" / "reconciler.env.example"
ENV = "freeze"  # unique to this test: container names start with freeze-
PORT = 18377
VENV_BIN = Path(sys.executable).parent


# ------------------------------------------------------------ the unit, as systemd reads it


def unit_service_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """The [Service] section: key -> every value, in order (systemd allows repeats)."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip('"')
    return values


def agent_environment(settings: dict[str, list[str]], *, repo: Path, identity: str, var_lib: Path) -> dict[str, str]:
    """What systemd gives ExecStart: a clean environment, the EnvironmentFile,
    Environment= lines, and $STATE_DIRECTORY for StateDirectory=.

    Only the two site-specific values an installer edits in the env file
    (where the repository is, which key reaches the hosts) are replaced.
    """
    example = env_file()
    assert {"RECONCILER_REPO", "RECONCILER_IDENTITY"} <= set(example), f"{ENV_EXAMPLE} lost a setting the unit needs"
    assert settings.get("EnvironmentFile") == ["/etc/reconciler/env"], "the unit reads the env file the example documents"
    env = {"PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update(example)
    env["RECONCILER_REPO"], env["RECONCILER_IDENTITY"] = str(repo), identity
    for line in settings.get("Environment", []):
        for assignment in shlex.split(line):
            key, value = assignment.split("=", 1)
            env[key] = value
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # the checkout under test, when it is not the installed one
    (state_name,) = settings["StateDirectory"]
    env["STATE_DIRECTORY"] = str(var_lib / state_name)
    (var_lib / state_name).mkdir(parents=True)  # systemd creates it before ExecStart
    return env


def exec_start(settings: dict[str, list[str]], env: dict[str, str]) -> list[str]:
    """ExecStart= with ${VAR} expanded as systemd does, run from this checkout's interpreter."""
    (line,) = settings["ExecStart"]
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word) for word in shlex.split(line)]
    assert Path(argv[0]).name == "reconciler" and argv[1] == "run", argv
    return [sys.executable, "-m", "reconciler", *argv[1:]]


def plain_shell_env() -> dict[str, str]:
    """A user's login shell on the agent's machine: none of the agent's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_") and k != "STATE_DIRECTORY"}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=cwd, env=plain_shell_env(), capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------ helpers


def service(image: str) -> str:
    return f"""
    web:
      image: {image}
      hosts: all
      ports: ["{PORT}:8080"]
      health: {{type: http, path: /health, interval: 500ms, successes: 2, deadline: 20s}}
      rollout: {{batch_size: 3}}
      stop_timeout: 2s
    """


def test_lock_from_a_plain_shell_freezes_the_agent_started_as_the_unit_starts_it(fleet, tmp_path):
    settings = unit_service_settings()
    # The agent records its state directory in the repository: under
    # ProtectSystem=strict the repository must be writable to it.
    assert env_file()["RECONCILER_REPO"] in settings["ReadWritePaths"][0].split(), settings["ReadWritePaths"]
    work = make_env_repo(tmp_path / "work", fleet, ENV)
    bare = tmp_path / "srv" / "env.git"
    bare.parent.mkdir()
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    assert main(["install-hooks", str(bare)]) == 0
    git(work.path, "remote", "add", "origin", str(bare))
    v1 = work.commit(service(fleet.images["v1"]), message="web v1")
    git(work.path, "push", "-q", "origin", "main")

    env = agent_environment(settings, repo=bare, identity=work.identity, var_lib=tmp_path / "var-lib")
    log = tmp_path / "agent.log"
    proc = subprocess.Popen(exec_start(settings, env), env=env, cwd="/", stdout=log.open("a"), stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: set(serving(fleet, PORT).values()) == {"demo-web v1"}), log.read_text()

        frozen = shell("reconciler lock freeze --reason 'release freeze, ask ops'", bare)
        assert frozen.returncode == 0, frozen.stderr
        assert "frozen by" in frozen.stdout, frozen.stdout
        before = containers(fleet, f"{ENV}-")

        v2 = work.commit(service(fleet.images["v2"]), message="web v2, pushed during the freeze")
        git(work.path, "push", "-q", "origin", "main")

        def refused_as_frozen():
            return log_events(log, "reconcile-end", commit=v2[:12], result="frozen")

        assert wait_for(refused_as_frozen), log.read_text()
        assert serving(fleet, PORT) == {h.name: "demo-web v1" for h in fleet.hosts}
        assert containers(fleet, f"{ENV}-") == before
        repo = pygit2.Repository(str(bare))
        assert "deployed" not in {a.result for a in gitlog.attempts(repo, v2, ENV)}

        # status, from the same shell, shows the agent's view of it.
        shown = shell(f"reconciler status --identity {shlex.quote(work.identity)}", bare)
        assert shown.returncode == 0, shown.stderr
        assert "FROZEN by" in shown.stdout and "release freeze, ask ops" in shown.stdout, shown.stdout
        assert f"last applied:   {v1[:12]}" in shown.stdout, shown.stdout
        assert str(Path(env["STATE_DIRECTORY"])) in shown.stdout, shown.stdout

        unfrozen = shell("reconciler unlock freeze", bare)
        assert unfrozen.returncode == 0, unfrozen.stderr
        assert "unfrozen" in unfrozen.stdout and "no agent is listening" not in unfrozen.stdout, unfrozen.stdout
        assert wait_for(lambda: set(serving(fleet, PORT).values()) == {"demo-web v2"}), log.read_text()
        assert wait_for(lambda: getattr(gitlog.latest(repo, v2, ENV), "result", None) == "deployed"), log.read_text()

        after = shell(f"reconciler status --identity {shlex.quote(work.identity)}", bare)
        assert after.returncode == 0, after.stderr
        assert f"last applied:   {v2[:12]}" in after.stdout and "FROZEN" not in after.stdout, after.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        remove_containers(fleet, f"{ENV}-")
