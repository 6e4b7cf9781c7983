"""The CLI's contract (issue 13): every command's --help, light and fast to
load; one exit-code table for every command; --repo, $RECONCILER_REPO and
the current directory; --env optional with one environment; the settings
file.  The engine's commands run against in-memory hosts (tests/fakes.py)
put where ``reconciler.adapters.fleet`` would connect: the CLI, its
parsing, the engine and the exit codes are the real ones.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentrepo import DIGEST1, DIGEST3, commit, env_yaml, files_for, init
from fakes import NEVER_OK, World
from reconciler.adapters.locks import Locks
from reconciler.cli import exitcodes
from reconciler.cli.main import COMMANDS, main
from reconciler.core.model import ImageRef

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pygit2", "docker", "fabric", "paramiko", "invoke", "ruamel", "psycopg", "pglast", "watchdog", "requests", "urllib3")
V1 = ImageRef.parse(f"registry.example:5000/demo/web:v1@{DIGEST1}")
BAD = ImageRef.parse(f"registry.example:5000/demo/web:v3@{DIGEST3}")
# A check that gives up quickly: the never-healthy release fails in about a second.
QUICK_HEALTH = "      type: running\n      interval: 100ms\n      deadline: 1s\n"


@pytest.fixture
def shell(monkeypatch, tmp_path):
    """A user's shell: none of reconciler's variables, no settings file, a scratch cwd."""
    for name in list(os.environ):
        if name.startswith("RECONCILER_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("RECONCILER_CONFIG", "")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return monkeypatch


@pytest.fixture
def hosts(monkeypatch):
    """In-memory hosts where the CLI connects; records how it connected."""
    world = World("h1")
    world.registry.publish(V1)
    world.registry.publish(BAD, NEVER_OK, logs="panic: no config")
    world.connects = []

    def open_hosts(hosts, *, identity_file, known_hosts_file, timeout=10.0, log=None):
        world.connects.append({"identity": identity_file, "timeout": timeout, "hosts": [h.name for h in hosts]})
        return world.hosts

    class Opening:  # fleet.start_opening's, done at once: each host's `then` on its in-memory driver
        def __init__(self, then):
            self.outcomes = {name: then(driver) if then else None for name, driver in world.hosts.items()}

        def result(self):
            return world.hosts, self.outcomes

        def close(self):
            pass

    def start_opening(hosts, *, identity_file, known_hosts_file, timeout=10.0, log=None, then=None):
        open_hosts(hosts, identity_file=identity_file, known_hosts_file=known_hosts_file, timeout=timeout)
        return Opening(then)

    from reconciler.adapters import fleet

    monkeypatch.setattr(fleet, "open_hosts", open_hosts)
    monkeypatch.setattr(fleet, "start_opening", start_opening)
    monkeypatch.setattr(fleet, "close_hosts", lambda hosts: None)
    return world


def quick(digest: str = DIGEST1, **yaml) -> dict[str, str]:
    """staging's files, with a health check that gives up within a second."""
    text = env_yaml(digest, **yaml).replace("      type: running\n", QUICK_HEALTH)
    return {"environments/staging/environment.yaml": text, "environments/staging/known_hosts": "# pins\n"}


def staging(tmp_path, name="env.git"):
    """A bare repository with one environment, staging, on host h1."""
    repo = init(tmp_path / name, bare=True)
    commit(repo, quick(), "web v1")
    return repo


def settings(tmp_path, text: str) -> Path:
    path = tmp_path / "reconciler.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ --help


def test_every_command_answers_help_without_loading_a_heavy_module():
    """One process asks every command for --help, then says what got imported."""
    script = f"""
import contextlib, io, json, sys
from reconciler.cli.main import COMMANDS, main
codes = {{}}
for name in [None, *COMMANDS]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        codes[name or ""] = (main([name, "--help"] if name else ["--help"]), out.getvalue())
from reconciler.adapters.lazyimports import is_deferred  # a stand-in for a module not loaded is not loaded
heavy = sorted(m for m, module in sys.modules.items() if m.split(".")[0] in {HEAVY!r} and not is_deferred(module))
print(json.dumps({{"codes": codes, "heavy": heavy}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["heavy"] == [], f"--help imported {report['heavy']}"
    for name, (code, text) in report["codes"].items():
        assert code == 0, (name, text)
        assert text.startswith(f"usage: reconciler {name}".rstrip()), (name, text[:80])
    assert set(report["codes"]) == {"", *COMMANDS}
    # The top-level help lists every command and the exit codes.
    top = report["codes"][""][1]
    assert all(name in top for name in COMMANDS) and "10 changes pending" in top


def test_the_top_level_help_imports_no_command_module():
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom reconciler.cli.main import main\nmain(['--help'])\n"
                           "print([m for m in sys.modules if m.startswith('reconciler.cli.commands.')])"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------ exit codes


def test_the_readme_has_the_one_exit_code_table():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Exit codes"):]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.M)
    assert [(int(code), text) for code, text in rows[:len(exitcodes.TABLE)]] == list(exitcodes.TABLE)


def test_exit_codes_of_validate_and_usage(shell, tmp_path, capsys):
    good = staging(tmp_path)
    assert main(["validate", "--repo", good.path]) == exitcodes.OK
    bad = init(tmp_path / "bad.git", bare=True)
    commit(bad, {**files_for(), "environments/staging/environment.yaml": env_yaml() + "bogus: 1\n"}, "broken")
    assert main(["validate", "--repo", bad.path]) == exitcodes.ERROR
    assert "environments/staging/environment.yaml:" in capsys.readouterr().out
    assert main(["validate", "--no-such-option"]) == exitcodes.USAGE
    assert main(["no-such-command"]) == exitcodes.USAGE
    assert main([]) == exitcodes.USAGE
    assert "usage: reconciler" in capsys.readouterr().err


def test_exit_codes_of_plan_apply_lock_and_run_once(shell, tmp_path, hosts, capsys):
    repo = staging(tmp_path)
    cli = ["--repo", repo.path, "--identity", "/dev/null"]
    assert main(["plan", *cli]) == exitcodes.CHANGES
    assert "+ h1/web: create" in capsys.readouterr().out
    assert main(["apply", *cli, "--yes"]) == exitcodes.OK
    assert main(["plan", *cli]) == exitcodes.OK
    assert main(["apply", *cli, "--yes"]) == exitcodes.OK  # in sync: nothing to do is success

    commit(repo, quick(DIGEST3, tag="v3"), "web v3: never healthy")
    assert main(["apply", *cli, "--yes"]) == exitcodes.FAILED
    assert "failure:" in capsys.readouterr().out
    assert hosts.active("staging", "web")["h1"] == (str(V1), "running")

    assert main(["lock", "--repo", repo.path, "--reason", "release freeze", "--by", "ops"]) == exitcodes.OK  # --env: the only one
    assert main(["apply", *cli, "--yes"]) == exitcodes.WAITING
    assert "frozen" in capsys.readouterr().err
    assert main(["run", "--once", *cli]) == exitcodes.WAITING
    said = capsys.readouterr()
    assert "hooks-outdated" in said.out + said.err and "pre-receive is missing" in said.out + said.err  # no install-hooks here
    assert main(["unlock", "--repo", repo.path]) == exitcodes.OK
    # An unknown environment is an error, not a usage mistake.
    assert main(["plan", *cli, "--env", "nope"]) == exitcodes.ERROR


def test_run_once_reports_the_most_serious_code():
    assert exitcodes.worst([exitcodes.OK, exitcodes.WAITING, exitcodes.FAILED]) == exitcodes.FAILED
    assert exitcodes.worst([exitcodes.WAITING, exitcodes.ERROR, exitcodes.FAILED]) == exitcodes.ERROR
    assert exitcodes.worst([]) == exitcodes.OK


# ------------------------------------------------------------------ --repo, --env


def _repo_with_services(tmp_path, name: str, services: int):
    """A working tree whose validate output says which one was read."""
    root = tmp_path / name
    files = files_for()
    text = files["environments/staging/environment.yaml"]
    for i in range(1, services):
        text += f"  web{i}:\n    image: registry.example:5000/demo/web:v1@{DIGEST1}\n    hosts: [web]\n"
    for path, content in {**files, "environments/staging/environment.yaml": text}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    return root


def test_the_repository_is_the_flag_then_the_variable_then_the_current_directory(shell, tmp_path, capsys):
    flag, variable, here = (_repo_with_services(tmp_path, n, k) for n, k in (("flag", 1), ("variable", 2), ("here", 3)))

    def services_seen(*argv) -> str:
        assert main(["validate", *argv]) == 0
        return capsys.readouterr().out.strip()

    shell.chdir(here)
    assert services_seen() == "ok: 1 environment, 3 services"
    shell.setenv("RECONCILER_REPO", str(variable))
    assert services_seen() == "ok: 1 environment, 2 services"
    assert services_seen("--repo", str(flag)) == "ok: 1 environment, 1 service"
    assert services_seen(str(flag)) == "ok: 1 environment, 1 service"  # the deprecated positional
    assert main(["validate", "--repo", str(flag), str(here)]) == exitcodes.USAGE
    assert main(["render", "--json"]) == 0  # render reads the same repository
    assert len(json.loads(capsys.readouterr().out)["services"]) == 2


def test_env_is_needed_only_among_several(shell, tmp_path, hosts, capsys):
    repo = staging(tmp_path)
    assert main(["plan", "--repo", repo.path, "--identity", "/dev/null"]) == exitcodes.CHANGES
    commit(repo, files_for(env="production"), "a second environment")
    for argv in (["plan", "--identity", "/dev/null"], ["render"], ["lock", "--reason", "x"], ["unlock"], ["history", "--at", "0"]):
        assert main([argv[0], "--repo", str(repo.path), *argv[1:]]) == exitcodes.USAGE, argv
        err = capsys.readouterr().err
        assert "--env is needed" in err and "(production, staging)" in err, (argv, err)
    assert main(["plan", "--repo", repo.path, "--identity", "/dev/null", "--env", "production"]) == exitcodes.CHANGES
    assert main(["lock", "--repo", repo.path, "--env", "production", "--reason", "x"]) == exitcodes.OK
    assert main(["unlock", "--repo", repo.path, "production"]) == exitcodes.OK  # the old positional
    assert main(["unlock", "--repo", repo.path, "--env", "staging", "production"]) == exitcodes.USAGE


# ------------------------------------------------------------------ the settings file


def test_plan_status_and_lock_need_no_flags_with_the_settings_file(shell, tmp_path, hosts, capsys):
    repo = staging(tmp_path)
    state = tmp_path / "agent-state"
    shell.setenv("RECONCILER_CONFIG", str(settings(tmp_path, f'identity = "keys/id"\nstate_dir = "{state}"\n'
                                                           '[timeouts]\nconnect = 3.5\n')))
    shell.chdir(repo.path)
    assert main(["plan"]) == exitcodes.CHANGES
    assert hosts.connects[-1] == {"identity": str(tmp_path / "keys" / "id"), "timeout": 3.5, "hosts": ["h1"]}
    assert main(["lock", "--reason", "audit"]) == exitcodes.OK
    assert Locks(state).frozen("staging").reason == "audit"
    assert f"state: {state} (state_dir in {tmp_path / 'reconciler.toml'})" in capsys.readouterr().out
    assert main(["status"]) == exitcodes.OK
    assert "FROZEN" in capsys.readouterr().out
    # A flag wins over the variable, which wins over the file.
    shell.setenv("RECONCILER_IDENTITY", "/from/variable")
    assert main(["plan"]) == exitcodes.CHANGES and hosts.connects[-1]["identity"] == "/from/variable"
    assert main(["plan", "--identity", "/from/flag", "--timeout", "7"]) == exitcodes.CHANGES
    assert hosts.connects[-1] == {"identity": "/from/flag", "timeout": 7.0, "hosts": ["h1"]}


def test_the_default_settings_file_is_optional_a_named_one_is_not(shell, tmp_path, hosts, capsys):
    from reconciler.cli import config

    shell.delenv("RECONCILER_CONFIG")
    assert config.location() == Path("/etc/reconciler/reconciler.toml")
    shell.setenv("RECONCILER_CONFIG", str(tmp_path / "missing.toml"))
    repo = staging(tmp_path)
    assert main(["plan", "--repo", repo.path]) == exitcodes.ERROR
    assert f"{tmp_path / 'missing.toml'}: no such file" in capsys.readouterr().err
    shell.setenv("RECONCILER_CONFIG", "")
    assert main(["plan", "--repo", repo.path]) == exitcodes.ERROR
    assert "no SSH identity" in capsys.readouterr().err
    # validate needs no setting, so a broken file does not stop it.
    shell.setenv("RECONCILER_CONFIG", str(settings(tmp_path, "identity = [")))
    assert main(["validate", "--repo", repo.path]) == exitcodes.OK


def test_a_mistake_in_the_settings_file_is_an_error_naming_file_and_key(shell, tmp_path, hosts, capsys):
    repo = staging(tmp_path)
    for text, message in (("identty = 'k'\n", "unknown setting identty (did you mean identity?)"),
                          ("[timeouts]\nconect = 3\n", "unknown setting timeouts.conect (did you mean timeouts.connect?)"),
                          ("[timeouts]\nconnect = 'soon'\n", "timeouts.connect: expected a number of seconds"),
                          ("identity = 3\n", "identity: expected a path as a string"),
                          ("identity = [\n", "not valid TOML")):
        path = settings(tmp_path, text)
        shell.setenv("RECONCILER_CONFIG", str(path))
        assert main(["plan", "--repo", repo.path]) == exitcodes.ERROR, text
        err = capsys.readouterr().err
        assert f"{path}: " in err and message in err, err


def test_the_agent_state_order_with_the_settings_file(shell, tmp_path):
    import pygit2

    from reconciler.cli import config
    from reconciler.cli.commands import _agent

    bare = tmp_path / "b.git"
    pygit2.init_repository(str(bare), bare=True)
    gdir = _agent.git_dir(str(bare))
    path = settings(tmp_path, 'state_dir = "configured"\n')
    mine = config.load({"RECONCILER_CONFIG": str(path)})
    assert mine.state_dir == tmp_path / "configured"  # relative to the file
    where = _agent.resolve_state(gdir, environ={"STATE_DIRECTORY": "/var/lib/unit"}, settings=mine)
    assert (where.path, where.source) == (tmp_path / "configured", f"state_dir in {path}")
    assert _agent.resolve_state(gdir, environ={"RECONCILER_STATE": "/env"}, settings=mine).path == Path("/env")
    assert _agent.resolve_state(gdir, explicit="/flag", settings=mine).path == Path("/flag")
    assert _agent.resolve_state(gdir, environ={"STATE_DIRECTORY": "/var/lib/unit"}, settings=config.Settings()).path == Path("/var/lib/unit")
