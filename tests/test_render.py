"""`reconciler render` prints what a user writes: its output, pasted back as
an environment.yaml (or a services/<name>.yaml), validates to the very
environment it was rendered from, every default included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.adapters import source
from reconciler.cli.main import main
from reconciler.core import schema
from sealed import SEALED_YAML

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "ab" * 32

# Every kind of value the format has, written the short ways a user would.
RICH = f"""\
hosts:
  db1: 10.0.0.5
  app1: {{address: 10.0.0.1, user: deploy, port: 2222, groups: [app, edge]}}
  app2: {{address: "fd00::2", groups: [app]}}
policy: {{require_digest: true, prune: true, drift: heal, keep_retired: 1, parallel_hosts: 8, on_failure: note, drift_interval: 90s}}
database: {{dsn_file: /etc/reconciler/app.dsn, via_host: db1, name: app, backup: when-migrating}}
services:
  api:
    image: r.example:5000/team/api:2.1@{DIGEST}
    hosts: [app]
    command: "serve --port 9000 --name 'the api'"
    env: ["MODE=on", "EMPTY=", "NUMBERISH=0755", "FLAG=true"]
    ports:
      - "127.0.0.1:9000:9000"
      - {{published: 9001, target: 9001, protocol: udp, host_ip: "::1"}}
      - "9443:443/tcp"
    volumes: ["/srv/api:/data", {{source: cfg, target: /etc/api, read_only: true}}]
    networks: [backend]
    restart: on-failure:3
    resources: {{memory: 1g, cpus: 1.5}}
    labels: {{team: core, "com.example/tier": gold}}
    health: {{type: http, path: /ready, status: 204, body_contains: ok, interval: 500ms, timeout: 1s,
              start_period: 1m30s, successes: 3, deadline: 2m}}
    rollout: {{batch_size: 2, strategy: stop-first}}
    depends_on: [cache]
    secrets:
      - {{name: api-token, file: /etc/reconciler/secrets/api-token}}
      - {{name: sealed, env: SEALED_VALUE, encrypted: {SEALED_YAML}}}
    migrations: {{path: /migrations, allow_contract: true, soak: 2h}}
    stop_timeout: 45s
  cache:
    image: r.example:5000/team/cache:7@{DIGEST}
    hosts: app1
    health: {{type: tcp, port: 6379}}
  worker:
    image: r.example:5000/team/worker:1@{DIGEST}
    hosts: all
    command: [run, --queue, jobs]
    health: {{type: command, command: "check --quick"}}
    migrations: {{command: [migrate, up]}}
  sidecar:
    image: r.example:5000/team/sidecar:1@{DIGEST}
    hosts: [app2]
    health: {{type: docker}}
"""


def rendered(repo: Path, env: str, *extra: str, capsys) -> str:
    assert main(["render", "--repo", str(repo), "--env", env, *extra]) == 0
    return capsys.readouterr().out


def repository(root: Path, env: str, environment_yaml: str, known_hosts: bytes = b"# pins\n", services: dict | None = None) -> Path:
    base = root / "environments" / env
    base.mkdir(parents=True)
    (base / "environment.yaml").write_text(environment_yaml)
    (base / "known_hosts").write_bytes(known_hosts)
    for name, text in (services or {}).items():
        (base / "services").mkdir(exist_ok=True)
        (base / "services" / f"{name}.yaml").write_text(text)
    return root


def load(root: Path, env: str):
    return schema.load_environment(source.snapshot_worktree(root), env)


@pytest.mark.parametrize("env", ["dev", "staging", "production"])
def test_the_examples_render_to_yaml_that_validates_to_the_same(env, tmp_path, capsys):
    example = ROOT / "desired-state"
    original = load(example, env)
    text = rendered(example, env, capsys=capsys)
    services = text[text.index("\nservices:"):]  # database.kind is a key users write; a service has none
    for internal in ("kind:", "expected_status:", "host_port:", "container_port:"):
        assert internal not in services
    pasted = repository(tmp_path / "pasted", env, text, (example / "environments" / env / "known_hosts").read_bytes())
    assert load(pasted, env) == original


def test_every_field_renders_back_to_itself(tmp_path, capsys):
    written = repository(tmp_path / "written", "prod", RICH)
    original = load(written, "prod")
    assert {s.health.kind for s in original.services} == {"http", "tcp", "command", "docker"}
    for form in ((), ("--json",)):
        text = rendered(written, "prod", *form, capsys=capsys)
        pasted = repository(tmp_path / f"pasted{len(form)}", "prod", text)
        assert load(pasted, "prod") == original, form


def test_a_rendered_service_is_a_services_file(tmp_path, capsys):
    written = repository(tmp_path / "written", "prod", RICH)
    original = load(written, "prod")
    api = rendered(written, "prod", "--service", "api", capsys=capsys)
    assert "type: http" in api and "status: 204" in api and "- 9443:443/tcp" in api
    rest = json.loads(rendered(written, "prod", "--json", capsys=capsys))
    del rest["services"]["api"]
    pasted = repository(tmp_path / "pasted", "prod", json.dumps(rest), services={"api": api})
    assert load(pasted, "prod") == original


def test_render_of_an_unknown_service_is_an_error(tmp_path, capsys):
    written = repository(tmp_path / "written", "prod", RICH)
    assert main(["render", "--repo", str(written), "--service", "nope"]) == 1  # --env: the only one
    assert "no service 'nope' in prod (have: api, cache, sidecar, worker)" in capsys.readouterr().err



def test_render_knows_every_key_a_service_may_have():
    """A key the schema learns (a new feature) must be rendered too, or the
    output stops round-tripping for services that use it."""
    from dataclasses import fields

    from reconciler.cli.commands.render import RENDERED_SERVICE_KEYS
    from reconciler.core import model
    from reconciler.core.schema_service import SERVICE_KEYS

    assert set(RENDERED_SERVICE_KEYS) == set(SERVICE_KEYS), "teach render.service_document the new key"
    assert {f.name for f in fields(model.Service)} - {"name"} == set(SERVICE_KEYS), "a Service field the schema does not read"
