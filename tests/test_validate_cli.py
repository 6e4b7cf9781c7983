"""`reconciler validate`, `render` and `init` as a person runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pygit2

from reconciler.cli.main import main
from schema_helpers import DIGEST

REPO = Path(__file__).resolve().parents[1]
LOCATED = re.compile(r"^environments/prod/environment\.yaml:\d+:\d+: \S")

# Ten mistakes, one per line marked with its number.
TEN_MISTAKES = f"""\
hosts:
  h1: {{address: 10.0.0.1, groups: [web]}}
  h2: {{address: 10.0.0.2, groups: [web]}}
policy:
  require_digest: true
services:
  web:
    image: r.example/web:v1@{DIGEST}
    hosts: [web]
    restrat: always                      # 1 unknown key
    ports: ["8080:80"]
    env:
      DEBUG: true                        # 2 wrong type
      DB_PASSWORD: hunter2               # 3 plain-text secret
    labels:
      io.reconciler.role: mine           # 4 reserved label
    depends_on: [cache]                  # 5 unknown service
    secrets:
      - {{name: tok, env: TOKEN, value: abc}}  # 6 secret with a value
  api:
    image: r.example/api:v2              # 7 unpinned under require_digest
    hosts: [h1, h7]                      # 8 unknown host
    ports: ["8080:81"]                   # 9 same host port as web on h1
    stop_timeout: 5s
    stop_timeout: 6s                     # 10 duplicate key
"""


def _repo(tmp_path: Path, env_text: str) -> Path:
    root = tmp_path / "repo"
    (root / "environments" / "prod").mkdir(parents=True)
    (root / "environments" / "prod" / "environment.yaml").write_text(env_text)
    (root / "environments" / "prod" / "known_hosts").write_text("# keys\n")
    return root


def test_ten_seeded_mistakes_give_ten_located_lines(tmp_path, capsys):
    root = _repo(tmp_path, TEN_MISTAKES)
    assert main(["validate", "--repo", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10, "\n".join(lines)
    assert all(LOCATED.match(line) for line in lines), lines
    marked = [n for n, text in enumerate(TEN_MISTAKES.splitlines(), 1) if re.search(r"# \d+ ", text)]
    assert sorted({int(line.split(":")[1]) for line in lines}) == marked


def test_exit_codes_through_the_real_command(tmp_path):
    root = _repo(tmp_path, TEN_MISTAKES)
    # The positional REPO is the deprecated spelling of --repo, still accepted (installed hooks use it).
    bad = subprocess.run([sys.executable, "-m", "reconciler", "validate", str(root)], capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stdout.splitlines()) == 10
    good = subprocess.run([sys.executable, "-m", "reconciler", "validate", str(REPO / "desired-state")], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip() == "ok: 3 environments, 3 services"
    missing = subprocess.run([sys.executable, "-m", "reconciler", "validate", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 1 and "not a directory" in missing.stderr


def test_validate_one_environment(capsys):
    assert main(["validate", "--env", "dev", "--repo", str(REPO / "desired-state")]) == 0
    assert capsys.readouterr().out.strip() == "ok: 1 environment, 1 service"
    assert main(["validate", "--env", "prod", "--repo", str(REPO / "desired-state")]) == 1
    assert "did you mean 'production'?" in capsys.readouterr().out


def test_validate_a_commit_of_a_bare_repository(tmp_path, capsys):
    work = _repo(tmp_path, TEN_MISTAKES.replace("restrat", "restart"))
    repo = pygit2.init_repository(str(work), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("t", "t@example.invalid")
    repo.create_commit("HEAD", sig, sig, "bad", repo.index.write_tree(), [])
    bare = tmp_path / "bare.git"
    pygit2.clone_repository(str(work), str(bare), bare=True)
    assert main(["validate", "--rev", "main", "--repo", str(bare)]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 9
    # A bare repository has no working tree: without --rev its HEAD is read.
    assert main(["validate", "--repo", str(bare)]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 9
    # The working tree is fixed but not committed: --rev still sees the commit.
    (work / "environments" / "prod" / "environment.yaml").write_text((REPO / "templates/environments/example/environment.yaml").read_text())
    assert main(["validate", "--repo", str(work)]) == 0
    assert main(["validate", "--rev", "HEAD", "--repo", str(work)]) == 1


def test_render_shows_defaults_applied(capsys):
    assert main(["render", "--env", "production", "--service", "web", "--json", "--repo", str(REPO / "desired-state")]) == 0
    web = json.loads(capsys.readouterr().out)
    assert web["hosts"] == ["h1", "h2", "h3"]
    assert web["restart"] == "unless-stopped"  # from reconciler.yaml defaults
    assert web["health"]["successes"] == 2 and web["health"]["deadline"] == 90.0
    assert web["image"].startswith("10.213.0.1:5000/demo/web:v1@sha256:")
    assert main(["render", "--env", "dev", "--repo", str(REPO / "desired-state")]) == 0
    assert "\nknown_hosts: known_hosts\n" in capsys.readouterr().out  # as environment.yaml writes it


def test_init_creates_a_valid_committed_repository(tmp_path, capsys):
    target = tmp_path / "new-env"
    assert main(["init", str(target)]) == 0
    repo = pygit2.Repository(str(target))
    assert not repo.head_is_unborn
    assert "environments/example/environment.yaml" in [e.path for e in repo.index]
    assert main(["validate", "--rev", "HEAD", "--repo", str(target)]) == 0
    assert main(["init", str(target)]) == 1  # never over an existing repository
