"""Loading valid environments: defaults, resolution, the example repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core import model
from reconciler.core.schema import list_environments, load_environment, validate
from reconciler.adapters.source import snapshot_worktree
from schema_helpers import DIGEST, ENV, snapshot
from sealed import SEALED, SEALED_YAML

REPO = Path(__file__).resolve().parents[1]


def test_loads_the_minimal_environment():
    environment = load_environment(snapshot(), "test")
    assert [h.name for h in environment.hosts] == ["db1", "h1", "h2"]
    web = environment.service("web")
    assert web.image == model.ImageRef("registry.example:5000/demo/web", "v1", DIGEST)
    assert web.hosts == ("h1", "h2")  # the group 'web' expanded
    assert web.ports == (model.PortMapping(8080, 8080),)
    assert web.health == model.HealthCheck(kind="http", port=8080, path="/health")
    assert web.env == (("APP_ENV", "test"),)
    assert environment.known_hosts == "environments/test/known_hosts"
    assert environment.policy == model.Policy(require_digest=True)


def test_root_defaults_then_environment_policy_then_service_win():
    root = "version: 1\ndefaults:\n  policy: {drift: heal, keep_retired: 7}\n  service:\n    restart: always\n    health: {interval: 500ms, deadline: 2m}\n    labels: {team: core}\n"
    env = ENV.replace("  require_digest: true\n", "  require_digest: true\n  keep_retired: 1\n").replace(
        "      path: /health\n", "      path: /health\n      deadline: 30s\n    labels: {tier: front}\n"
    )
    environment = load_environment(snapshot(env=env, files={"reconciler.yaml": root}), "test")
    assert environment.policy.drift == "heal" and environment.policy.keep_retired == 1
    web = environment.service("web")
    assert web.restart == "always"
    assert (web.health.interval, web.health.deadline) == (0.5, 30.0)
    assert web.labels == (("team", "core"), ("tier", "front"))


def test_every_form_a_compose_user_writes():
    env = f"""\
hosts:
  h1: 10.0.0.1
  h2: {{address: 10.0.0.2, user: deploy, port: 2222, groups: [web, edge]}}
policy: {{require_digest: false, drift_interval: 1m30s}}
database: {{dsn_file: /etc/reconciler/db.dsn, via_host: h1, backup: when-migrating}}
services:
  api:
    image: r.example/api:v2
    hosts: all
    command: gunicorn -b 0.0.0.0:8000 "app:create()"
    env: ["MODE=api", "EMPTY="]
    ports:
      - "127.0.0.1:8000:8000/udp"
      - {{published: 9000, target: 9001}}
    volumes: ["/srv/data:/data:ro", {{source: logs, target: /logs}}]
    networks: [backend]
    resources: {{memory: 1g, cpus: 1.5}}
    health: {{type: command, command: [curl, -f, localhost:8000], successes: 3}}
    rollout: {{batch_size: 2, strategy: start-first}}
    secrets:
      - {{name: db-password, file: /etc/reconciler/secrets/db}}
      - {{name: api-key, env: API_KEY, encrypted: {SEALED_YAML}}}
    migrations: {{path: /app/migrations, allow_contract: true, soak: 1h}}
    stop_timeout: 30s
  worker:
    image: r.example/api@{DIGEST}
    hosts: [edge]
    depends_on: [api]
    restart: on-failure:3
    health: {{type: docker}}
"""
    environment = load_environment(snapshot(env=env), "test")
    assert environment.host("h1") == model.Host("h1", "10.0.0.1")
    assert environment.host("h2") == model.Host("h2", "10.0.0.2", "deploy", 2222, ("edge", "web"))
    assert environment.policy.drift_interval == 90.0
    assert environment.database == model.Database(dsn_file="/etc/reconciler/db.dsn", via_host="h1", backup="when-migrating")
    api = environment.service("api")
    assert api.hosts == ("h1", "h2")
    assert api.command == ("gunicorn", "-b", "0.0.0.0:8000", "app:create()")
    assert api.env == (("EMPTY", ""), ("MODE", "api"))
    assert api.ports == (model.PortMapping(8000, 8000, "udp", "127.0.0.1"), model.PortMapping(9000, 9001))
    assert api.volumes == (model.VolumeMount("/srv/data", "/data", True), model.VolumeMount("logs", "/logs"))
    assert api.resources == model.Resources("1g", 1.5)
    assert api.health.kind == "command" and api.health.command == ("curl", "-f", "localhost:8000") and api.health.successes == 3
    assert api.rollout == model.Rollout(2, "start-first")
    assert api.secrets == (
        model.SecretRef("api-key", "API_KEY", encrypted=SEALED),
        model.SecretRef("db-password", "DB_PASSWORD", file="/etc/reconciler/secrets/db"),
    )
    assert api.migrations == model.Migrations(path="/app/migrations", allow_contract=True, soak=3600.0)
    assert api.stop_timeout == 30.0
    worker = environment.service("worker")
    assert worker.hosts == ("h2",) and worker.depends_on == ("api",) and worker.restart == "on-failure:3"
    assert worker.image.tag is None and worker.image.pinned


def test_services_in_their_own_files():
    env = ENV.split("services:")[0]
    snap = snapshot(env=env, files={"environments/test/services/web.yaml": f"image: r.example/web@{DIGEST}\nhosts: [h1]\n", "environments/test/services/README.md": "notes"})
    assert [s.name for s in load_environment(snap, "test").services] == ["web"]


@pytest.mark.parametrize("directory", ["desired-state", "templates"])
def test_shipped_repositories_are_valid(directory):
    snap = snapshot_worktree(REPO / directory)
    assert validate(snap) == []
    for name in list_environments(snap):
        load_environment(snap, name)


def test_desired_state_has_the_three_environments_of_the_demo():
    snap = snapshot_worktree(REPO / "desired-state")
    assert list_environments(snap) == ("dev", "production", "staging")
    dev, production = load_environment(snap, "dev"), load_environment(snap, "production")
    assert not dev.policy.require_digest and dev.policy.drift == "heal"
    assert production.policy.require_digest and not production.policy.prune
    web = production.service("web")
    assert web.image.repository == "10.213.0.1:5000/demo/web" and web.image.tag == "v1" and web.image.pinned
    assert web.hosts == ("h1", "h2", "h3")
    assert web.ports[0].container_port == 8080 and web.health.path == "/health"
    assert {h.address for h in production.hosts} == {"10.213.0.11", "10.213.0.12", "10.213.0.13"}
    for name in ("dev", "staging", "production"):
        text = (REPO / "desired-state" / "environments" / name / "environment.yaml").read_text()
        assert text.count("@sha256:") == 1, "the sandbox rewrites the digest in one place"
