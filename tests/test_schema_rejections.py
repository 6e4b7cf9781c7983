"""Every rejection of the environment format, with its exact location."""

from __future__ import annotations

import pytest

from reconciler.errors import InvalidDesiredState
from reconciler.core.schema import MAX_FILE_BYTES, Snapshot, load_environment, validate
from schema_helpers import DIGEST, ENV, KNOWN_HOSTS, env_with, snapshot

F = "environments/test/environment.yaml"
IMAGE = f"r.example/web:v1@{DIGEST}"


def one(problems: list[str], where: str, *substrings: str) -> None:
    """Exactly one problem at ``where`` (path:line:col) holding every substring."""
    found = [p for p in problems if p.startswith(where + ": ")]
    assert found, f"nothing at {where}; got:\n" + "\n".join(problems)
    assert any(all(s in p for s in substrings) for p in found), "\n".join(found)


def service(body: str, name: str = "web") -> str:
    return f"  {name}:\n    image: {IMAGE}\n    hosts: [web]\n{body}"


def test_unknown_key_suggests_the_close_one():
    problems = validate(snapshot(env=env_with(service("    restrat: always\n"))))
    one(problems, f"{F}:10:5", "unknown key 'restrat'", "did you mean 'restart'?")
    assert len(problems) == 1


def test_unknown_top_level_key():
    problems = validate(snapshot(env=ENV + "servics: {}\n"))
    one(problems, f"{F}:18:1", "unknown key 'servics'", "did you mean 'services'?")


def test_duplicate_keys_are_all_reported():
    problems = validate(snapshot(env=env_with(service("    restart: always\n    restart: no\n    env: {A: x, A: y}\n"))))
    one(problems, f"{F}:11:5", "duplicate key 'restart'", "first at 10:5")
    one(problems, f"{F}:12:17", "duplicate key 'A'", "first at 12:11")


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        ("    restart: 3\n", "10:14", "expected a string, got a number"),
        ("    ports: 8080\n", "10:12", "expected a list"),
        ("    rollout: {batch_size: two}\n", "10:27", "expected a whole number"),
        ("    stop_timeout: soon\n", "10:19", "expected a duration like 500ms, 2s, 1m"),
        ("    resources: {memory: lots}\n", "10:25", "invalid value 'lots'"),
        ("    health: {type: http, port: 80, status: 700}\n", "10:44", "between 100 and 599"),
        ("    health: {type: smoke}\n", "10:20", "must be one of http, tcp, command, docker, running"),
        ("    env: {DEBUG: true}\n", "10:18", 'expected a string, got a boolean; quote it: "true"'),
        ("    env: {VERSION: 1.10}\n", "10:20", 'quote it: "1.10"'),
        ("    command: {run: x}\n", "10:14", "expected a list, got a mapping"),
    ],
)
def test_wrong_types(body, where, message):
    one(validate(snapshot(env=env_with(service(body)))), f"{F}:{where}", message)


def test_wrong_type_in_policy_and_hosts():
    text = env_with(service(""), hosts="  h1: {address: 10.0.0.1, port: ssh, groups: [web]}\n", policy="drift: fix")
    problems = validate(snapshot(env=text))
    one(problems, f"{F}:2:33", "hosts.h1.port", "expected a whole number")
    one(problems, f"{F}:4:10", "policy.drift", "must be one of report, heal", "'fix'")


def test_unknown_host_or_group_suggests():
    problems = validate(snapshot(env=env_with("  web:\n    image: " + IMAGE + "\n    hosts: [h1, webb, h9]\n")))
    one(problems, f"{F}:9:17", "unknown host or group 'webb'", "did you mean 'web'?")
    one(problems, f"{F}:9:23", "unknown host or group 'h9'")


def test_database_via_unknown_host():
    text = env_with(service(""), top="database: {kind: postgresql, dsn_file: /etc/x.dsn, via_host: h7}\n")
    one(validate(snapshot(env=text)), f"{F}:6:62", "database.via_host: unknown host 'h7'")


def test_unknown_dependency_and_self_dependency():
    text = env_with(service("    depends_on: [dbb, web]\n") + service("", name="db").replace("[web]", "[h1]"))
    problems = validate(snapshot(env=text))
    one(problems, f"{F}:10:18", "unknown service 'dbb'", "did you mean 'db'?")
    one(problems, f"{F}:10:23", "cannot depend on itself")


def test_dependency_cycle_reported_once():
    text = env_with(service("    depends_on: [b]\n", "a") + service("    depends_on: [c]\n", "b") + service("    depends_on: [a]\n", "c"))
    problems = validate(snapshot(env=text))
    cycles = [p for p in problems if "cycle" in p]
    assert cycles == [f"{F}:10:18: services.a.depends_on: dependency cycle a -> b -> c -> a"]


def test_same_host_port_on_one_host():
    text = env_with(service('    ports: ["8080:80"]\n', "a") + service('    ports: ["127.0.0.1:8080:81"]\n', "b").replace("[web]", "[h2]"))
    problems = validate(snapshot(env=text))
    one(problems, f"{F}:14:13", "host port 8080/tcp is already published by service 'a'", "on h2")
    assert len(problems) == 1


def test_same_port_other_protocol_or_other_hosts_is_fine():
    text = env_with(
        service('    ports: ["8080:80"]\n', "a").replace("[web]", "[h1]")
        + service('    ports: ["8080:80/udp"]\n', "b").replace("[web]", "[h1]")
        + service('    ports: ["8080:80"]\n', "c").replace("[web]", "[h2]")
    )
    assert validate(snapshot(env=text)) == []


def test_unpinned_image_where_policy_requires_a_digest():
    text = env_with("  web:\n    image: r.example/web:v1\n    hosts: [web]\n")
    problems = validate(snapshot(env=text))
    one(problems, f"{F}:8:12", "not pinned to a digest", "policy.require_digest", "r.example/web:v1@sha256:<64 hex digits>")
    assert validate(snapshot(env=text.replace("require_digest: true", "require_digest: false"))) == []


def test_malformed_image_reference():
    one(validate(snapshot(env=env_with("  web:\n    image: Web:v1\n    hosts: [web]\n"))), f"{F}:8:12", "invalid repository name")


@pytest.mark.parametrize("key", ["DB_PASSWORD", "API_TOKEN", "SECRET", "STRIPE_SECRET_KEY", "PRIVATE_KEY"])
def test_plain_text_secret_in_env(key):
    problems = validate(snapshot(env=env_with(service(f"    env:\n      {key}: s3cr3t-value\n"))))
    one(problems, f"{F}:11:7", f"env.{key}: looks like a plain-text secret", "secrets:")


@pytest.mark.parametrize("entry", ["DB_PASSWORD_FILE: /run/secrets/db", "TOKEN_TTL: '3600'", "MONKEY: banana", "API_KEY: ''"])
def test_references_and_lookalikes_are_not_secrets(entry):
    assert validate(snapshot(env=env_with(service(f"    env:\n      {entry}\n")))) == []


def test_private_key_value_is_a_secret_whatever_its_name():
    text = env_with(service('    env:\n      TLS: "-----BEGIN RSA PRIVATE KEY-----"\n'))
    one(validate(snapshot(env=text)), f"{F}:11:7", "plain-text secret")


def test_secret_with_a_value():
    text = env_with(service("    secrets:\n      - {name: db, env: DB_PASSWORD, value: hunter2}\n"))
    one(validate(snapshot(env=text)), f"{F}:11:38", "secrets[0].value", "never holds its value", "file:", "encrypted:")


def test_secret_needs_exactly_one_source():
    text = env_with(service("    secrets:\n      - {name: db, env: DB, file: /x, encrypted: abc}\n      - {name: db2, file: relative}\n"))
    problems = validate(snapshot(env=text))
    one(problems, f"{F}:11:9", "exactly one of 'file'")
    one(problems, f"{F}:12:27", "must be an absolute path on the host")


def test_reserved_label():
    text = env_with(service("    labels:\n      io.reconciler.service: other\n      team: a\n"))
    problems = validate(snapshot(env=text))
    one(problems, f"{F}:11:7", "label 'io.reconciler.service' is reserved")
    assert len(problems) == 1


def test_known_hosts_path_traversal():
    problems = validate(snapshot(env=ENV + "known_hosts: ../../../etc/ssh/ssh_known_hosts\n"))
    one(problems, f"{F}:18:14", "known_hosts", "leaves the repository")


def test_known_hosts_missing():
    files = {F: ENV.encode()}
    one(validate(Snapshot(files=files)), f"{F}:1:1", "environments/test/known_hosts is missing")


def test_symlink_leaving_the_repository():
    snap = snapshot(env=None, files={F: ENV}, links={"environments/test/known_hosts": "../../../../etc/ssh/ssh_known_hosts"})
    one(validate(snap), "environments/test/known_hosts:1:1", "symlink to '../../../../etc/ssh/ssh_known_hosts' leaves the repository")


def test_absolute_symlink_and_link_to_an_environment_file():
    snap = snapshot(env=None, files={"shared/env.yaml": ENV, "environments/test/known_hosts": KNOWN_HOSTS}, links={F: "/etc/passwd"})
    one(validate(snap), f"{F}:1:1", "leaves the repository")
    inside = snapshot(env=None, files={"shared/env.yaml": ENV, "environments/test/known_hosts": KNOWN_HOSTS}, links={F: "../../shared/env.yaml"})
    assert validate(inside) == []


def test_oversize_file():
    snap = snapshot(env=None, files={"environments/test/known_hosts": KNOWN_HOSTS}, oversize={F: MAX_FILE_BYTES + 1})
    one(validate(snap), f"{F}:1:1", f"file is {MAX_FILE_BYTES + 1} bytes, over the {MAX_FILE_BYTES} byte limit")
    big = snapshot(env=ENV + "#" * MAX_FILE_BYTES)
    one(validate(big), f"{F}:1:1", "over the")


def test_malformed_yaml_uses_the_parser_position():
    text = ENV.replace("    hosts: [web]\n", "    hosts: [web\n")
    problems = validate(snapshot(env=text))
    assert len(problems) == 1
    one(problems, f"{F}:11:10", "malformed YAML", "flow sequence")


def test_not_utf8_points_at_the_byte():
    snap = snapshot(env=None, files={F: b"hosts:\n  h1: \xff\n", "environments/test/known_hosts": KNOWN_HOSTS})
    one(validate(snap), f"{F}:2:7", "not valid UTF-8")


def test_unsafe_tags_and_aliases_are_refused():
    problems = validate(snapshot(env=ENV + "x: !!python/object/apply:os.system [id]\n"))
    one(problems, f"{F}:18:4", "YAML tag '!!python/object/apply:os.system' is not allowed")
    problems = validate(snapshot(env=ENV.replace("APP_ENV: test", "APP_ENV: &e test\n      OTHER: *e")))
    one(problems, f"{F}:14:16", "anchors and aliases are not supported")
    assert len(problems) == 1


def test_every_problem_at_once_sorted_and_raised():
    text = env_with(service("    restrat: x\n    env: {DEBUG: true}\n", "web") + "  other:\n    hosts: [nowhere]\n")
    with pytest.raises(InvalidDesiredState) as caught:
        load_environment(snapshot(env=text), "test")
    problems = list(caught.value.problems)
    assert len(problems) == 4
    lines = [int(p.split(":")[1]) for p in problems]
    assert lines == sorted(lines)
    assert str(caught.value) == "\n".join(problems)


def test_problems_in_root_defaults_point_at_reconciler_yaml():
    root = "defaults:\n  service:\n    restart: sometimes\n    health: {intervall: 1s}\n  polcy: {}\n"
    problems = validate(snapshot(files={"reconciler.yaml": root}))
    one(problems, "reconciler.yaml:3:14", "restart: invalid value 'sometimes'")
    one(problems, "reconciler.yaml:4:14", "unknown key 'intervall'", "did you mean 'interval'?")
    one(problems, "reconciler.yaml:5:3", "unknown key 'polcy'", "did you mean 'policy'?")


def test_unknown_environment_suggests():
    one(validate(snapshot(), env="tset"), "environments/tset/environment.yaml:1:1", "no environment 'tset'", "did you mean 'test'?")


def test_service_defined_inline_and_in_its_own_file():
    snap = snapshot(files={"environments/test/services/web.yaml": f"image: {IMAGE}\nhosts: all\n"})
    one(validate(snap), "environments/test/services/web.yaml:1:1", "services.web: defined twice", f"{F}:8")
