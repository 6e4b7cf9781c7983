"""``reconciler secret set ENV NAME``: stdin encrypted to the environment's
age recipients, written into the YAML in place with every comment kept;
the value never printed, and what is written decrypts to it."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyrage import x25519

from reconciler.adapters import secrets
from reconciler.cli.main import main
from reconciler.core import schema
from reconciler.adapters.source import snapshot_worktree
from sealed import SEALED_YAML

CANARY = "canary-cli-5d1e-never-printed"
DIGEST = "sha256:" + "ab" * 32

ENV = textwrap.dedent(f"""\
    # production: comments everywhere must survive
    hosts:
      h1: {{address: 10.0.0.1, user: deploy}}   # the deploy user

    services:
      web:
        image: r.example/web:1@{DIGEST}
        hosts: all
        secrets:
          # the API key, rotated by ops
          - name: api-key
            env: API_KEY
            encrypted: {SEALED_YAML}   # keep me
          - {{name: flowed, encrypted: {SEALED_YAML}}}
        env:
          MODE: prod   # after the secrets
      api:
        image: r.example/api:1@{DIGEST}
        hosts: all
        # no secrets yet
        stop_timeout: 2s
    """)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    key = x25519.Identity.generate()
    root = tmp_path / "repo"
    env = root / "environments" / "prod"
    env.mkdir(parents=True)
    (env / "environment.yaml").write_text(ENV)
    (env / "known_hosts").write_text("# pins\n")
    (env / "age-recipients").write_text(f"# the agent's key\n{key.to_public()}\n")
    (root / "environments" / "prod" / "services").mkdir()
    (root / "environments" / "prod" / "services" / "worker.yaml").write_text(
        f"image: r.example/w:1@{DIGEST}\nhosts: all\nsecrets: []  # none\n")
    keyfile = tmp_path / "agent.agekey"
    keyfile.write_text(f"{key}\n")
    keyfile.chmod(0o600)
    monkeypatch.setenv(secrets.AGE_KEY_ENV, str(keyfile))
    secrets.forget_identities()
    yield root
    secrets.forget_identities()


def secret_set(monkeypatch, capsys, root, *argv, value=CANARY + "\n"):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(value.encode())))
    code = main(["secret", "set", "--repo", str(root), *argv])
    out = capsys.readouterr()
    assert CANARY not in out.out + out.err
    return code, out


def value_of(root: Path, service: str, name: str):
    """The decrypted value and the parsed secret, as the agent will see them."""
    environment = schema.load_environment(snapshot_worktree(root), "prod")
    (secret,) = [s for s in environment.service(service).secrets if s.name == name]
    return secrets.decrypt(secret, "prod")[0].decode(), secret


def test_set_replaces_the_value_in_place_and_keeps_every_comment(repo, monkeypatch, capsys):
    code, out = secret_set(monkeypatch, capsys, repo, "prod", "api-key")
    assert code == 0, out
    assert "environment.yaml:13: secret 'api-key' of web replaced, encrypted to 1 recipient" in out.out
    text = (repo / "environments/prod/environment.yaml").read_text()
    before, after = ENV.split(f'        encrypted: {SEALED_YAML}   # keep me\n')
    assert text.startswith(before) and text.endswith(after)  # byte for byte around the value
    assert "        encrypted: | # keep me\n          -----BEGIN AGE ENCRYPTED FILE-----\n" in text
    assert CANARY not in text
    value, secret = value_of(repo, "web", "api-key")
    assert value == CANARY and secret.env == "API_KEY"  # the final newline of the input is not the value's

    # Again: the block is replaced by a new block, still nothing else moves.
    first = text
    code, _ = secret_set(monkeypatch, capsys, repo, "prod", "api-key", value=CANARY + "-2")
    assert code == 0
    text = (repo / "environments/prod/environment.yaml").read_text()
    assert text != first and text.startswith(before) and text.endswith(after)
    assert value_of(repo, "web", "api-key")[0] == CANARY + "-2"


def test_set_in_a_flow_mapping_writes_a_quoted_string(repo, monkeypatch, capsys):
    code, out = secret_set(monkeypatch, capsys, repo, "prod", "flowed")
    assert code == 0, out
    text = (repo / "environments/prod/environment.yaml").read_text()
    assert '      - {name: flowed, encrypted: "-----BEGIN AGE ENCRYPTED FILE-----\\n' in text
    assert value_of(repo, "web", "flowed")[0] == CANARY


def test_set_adds_a_new_secret_to_a_service_without_secrets_and_to_a_flow_list(repo, monkeypatch, capsys):
    code, out = secret_set(monkeypatch, capsys, repo, "prod", "db-password", "--service", "api", "--as", "file", "--var", "DB_PASSWORD_FILE")
    assert code == 0, out
    text = (repo / "environments/prod/environment.yaml").read_text()
    assert "    # no secrets yet\n    stop_timeout: 2s\n    secrets:\n      - name: db-password\n        env: DB_PASSWORD_FILE\n        as: file\n" in text
    value, secret = value_of(repo, "api", "db-password")
    assert value == CANARY and secret.delivery == "file" and secret.env == "DB_PASSWORD_FILE"

    code, out = secret_set(monkeypatch, capsys, repo, "prod", "token", "--service", "worker")
    assert code == 0, out
    worker = (repo / "environments/prod/services/worker.yaml").read_text()
    assert worker.startswith("image: ") and worker.rstrip().endswith("}]  # none")
    value, secret = value_of(repo, "worker", "token")
    assert value == CANARY and secret.env == "TOKEN"


def test_refusals_say_what_to_do(repo, monkeypatch, capsys):
    assert main(["secret", "set"]) == 2
    assert main(["secret", "set", "--repo", str(repo), "prod", "missing"]) != 0
    assert "give --service to add it" in capsys.readouterr().err
    (repo / "environments/prod/age-recipients").write_text("# nobody\n")
    code, out = secret_set(monkeypatch, capsys, repo, "prod", "api-key")
    assert code != 0 and "age-recipients:1:1: no recipient" in out.err
    (repo / "environments/prod/age-recipients").write_text("age1notakey\n")
    code, out = secret_set(monkeypatch, capsys, repo, "prod", "api-key")
    assert code != 0 and "age-recipients:1:1: not an age X25519 recipient" in out.err
    assert (repo / "environments/prod/environment.yaml").read_text() == ENV  # nothing written


def test_the_value_is_in_no_argv_the_command_line_carries_names_only(repo):
    """Run as a process: the value goes on stdin, and the argv of the process is only names."""
    proc = subprocess.run([sys.executable, "-m", "reconciler", "secret", "set", "--repo", str(repo), "prod", "api-key"],
                          input=CANARY.encode(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert CANARY.encode() not in proc.stdout + proc.stderr
