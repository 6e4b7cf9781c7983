"""The installable tool: build the wheel, install it into a fresh virtualenv
outside the source tree, and use it from a directory outside the tree
(issue 13: hooks, templates, the unit and the example are package data).

Offline on purpose: the wheel is built with the project virtualenv's own
setuptools (``--no-build-isolation --no-index``), and the fresh virtualenv
borrows the already-installed dependencies through a ``.pth`` line instead
of downloading them; the wheel itself is installed by pip, for real, and the
test checks that ``reconciler`` is imported from it and not from the tree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pygit2
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# What a checkout has that a build must not see (and that may be busy: other
# sessions' virtualenv, caches, build output).
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis", ".sandbox", "results")
PACKAGE_DATA = ("reconciler/_data/hooks/pre-receive", "reconciler/_data/hooks/post-receive",
                "reconciler/_data/templates/reconciler.yaml", "reconciler/_data/templates/environments/example/environment.yaml",
                "reconciler/_data/systemd/reconciler.service", "reconciler/_data/systemd/reconciler.env.example",
                "reconciler/_data/desired-state/environments/production/environment.yaml")


def sh(argv, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{shlex.join(map(str, argv))} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def user_env(home: Path) -> dict:
    """A user's shell: no PYTHONPATH, no reconciler variables, no settings file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_", "PYTHON", "GIT_")) and k != "VIRTUAL_ENV"}
    env.update(HOME=str(home), RECONCILER_CONFIG="", GIT_AUTHOR_NAME="New User", GIT_AUTHOR_EMAIL="new@example.invalid",
               GIT_COMMITTER_NAME="New User", GIT_COMMITTER_EMAIL="new@example.invalid")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(virtualenv, wheel): the wheel built from a copy of the tree, installed in a new virtualenv."""
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, f"setuptools {setuptools.__version__} in {sys.prefix}: run `make setup` (the test extra needs >= 77)"
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)
    dist = base / "dist"
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src], cwd=base)
    wheel = next(dist.glob("reconciler-*.whl"))
    venv = base / "venv"
    sh([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    sh([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", "--no-index", wheel], cwd=base)
    site = Path(sh([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip())
    # The dependencies, already installed in the project's virtualenv.  A .pth
    # line only appends that directory to sys.path (its own .pth files, the
    # editable install's among them, are not run), after the new site-packages.
    (site / "_reconciler_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, wheel


def test_the_wheel_carries_hooks_templates_unit_and_example(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in PACKAGE_DATA if n not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    # The files themselves, not symlinks into a source tree the user does not have.
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("reconciler/_data/hooks/pre-receive") == (ROOT / "hooks" / "pre-receive").read_bytes()


def test_init_validate_and_install_hooks_from_outside_the_tree(installed, tmp_path):
    venv, _ = installed
    exe = venv / "bin" / "reconciler"
    outside = tmp_path / "work"
    outside.mkdir()
    env = user_env(tmp_path)
    where = sh([venv / "bin" / "python", "-c", "import reconciler, reconciler.resources as r; print(reconciler.__file__); print(r.path('hooks'))"],
               cwd=outside, env=env).stdout.splitlines()
    assert all(line.startswith(str(venv)) for line in where), f"imported from the tree, not the wheel: {where}"

    created = sh([exe, "init", "envs"], cwd=outside, env=env)
    assert "created envs at" in created.stdout
    assert (outside / "envs" / "environments" / "example" / "environment.yaml").is_file()
    valid = sh([exe, "validate", "--repo", "envs"], cwd=outside, env=env)
    assert valid.stdout.strip() == "ok: 1 environment, 1 service", valid.stdout
    # From inside the new repository: --repo defaults to the current directory.
    assert sh([exe, "validate"], cwd=outside / "envs", env=env).returncode == 0

    bare = outside / "envs.git"
    pygit2.init_repository(str(bare), bare=True, initial_head="main")
    hooks = sh([exe, "install-hooks", "--repo", bare], cwd=outside, env=env)
    assert f"installed {bare / 'hooks' / 'pre-receive'}" in hooks.stdout
    pre_receive = (bare / "hooks" / "pre-receive").read_text()
    assert f"RECONCILER=${{RECONCILER:-{exe}}}" in pre_receive  # the installed entry point, not the tree's
    assert (bare / "hooks" / "post-receive").read_text().startswith(f"#!{venv / 'bin' / 'python'}")

    # The hooks work: a push of the new repository is validated by the installed tool and accepted...
    sh(["git", "-C", "envs", "push", "-q", str(bare), "main"], cwd=outside, env=env)
    assert pygit2.Repository(str(bare)).references["refs/heads/main"].target == pygit2.Repository(str(outside / "envs")).head.target
    # ...and an invalid one is refused with the problem located.
    env_file = outside / "envs" / "environments" / "example" / "environment.yaml"
    env_file.write_text(env_file.read_text() + "bogus: 1\n")
    sh(["git", "-C", "envs", "commit", "-qam", "a mistake"], cwd=outside, env=env)
    refused = sh(["git", "-C", "envs", "push", "-q", str(bare), "main"], cwd=outside, env=env, check=False)
    assert refused.returncode != 0 and "environments/example/environment.yaml:" in refused.stderr, refused.stderr


def test_the_unit_runs_the_documented_install_path(installed, tmp_path):
    """The unit starts /usr/local/bin/reconciler; the README installs the
    tool so that this is its entry point (pipx with PIPX_BIN_DIR, or a
    virtualenv and a symlink).  Here: the symlink, in a scratch root, runs the
    unit's own command line."""
    venv, _ = installed
    unit = (venv / "lib").glob("python*/site-packages/reconciler/_data/systemd/reconciler.service")
    unit_text = next(unit).read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit_text, re.M).group(1)
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/reconciler"
    readme = (ROOT / "README.md").read_text()
    assert "PIPX_BIN_DIR=/usr/local/bin pipx install" in readme
    assert "ln -s /opt/reconciler/bin/reconciler /usr/local/bin/reconciler" in readme

    link = tmp_path / "usr" / "local" / "bin" / "reconciler"
    link.parent.mkdir(parents=True)
    link.symlink_to(venv / "bin" / "reconciler")
    command = [str(link)] + [a.replace("${RECONCILER_REPO}", str(tmp_path / "env.git")) for a in argv[1:]]
    shown = sh(command + ["--help"], cwd=tmp_path, env=user_env(tmp_path))
    assert "usage: reconciler run" in shown.stdout
