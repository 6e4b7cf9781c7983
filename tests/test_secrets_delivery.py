"""Encrypted secrets reach the container (issue 12): what ``DockerHost.create``
hands the engine, with the Engine API replaced by a recorder.  The fleet
test (tests/test_secrets_fleet.py) does the same on real engines."""

from __future__ import annotations

import textwrap

import pytest

from reconciler.adapters import hosts, secrets
from reconciler.core import managed, model, schema
from reconciler.core.schema import Snapshot

CANARY = "canary-7f3a9c-not-for-your-eyes"


class RecordingAPI:
    """The few Engine API calls ``create`` makes, recorded."""

    def __init__(self):
        self.created = []

    def create_host_config(self, **kwargs):
        return kwargs

    def create_container(self, image, **kwargs):
        self.created.append({"image": image, **kwargs})
        return {"Id": "c" * 64}


class Engine:
    def __init__(self):
        self.api = RecordingAPI()


def driver(monkeypatch) -> hosts.DockerHost:
    host = hosts.DockerHost.__new__(hosts.DockerHost)
    host.name, host.timeout, host.engine = "h1", 10.0, Engine()
    # No SSH: each Engine API call is made as is.
    monkeypatch.setattr(hosts.DockerHost, "over_ssh", lambda self, what, fn, *a, retry=False, **kw: fn(*a, **kw))
    return host


def environment(secrets_yaml: str) -> model.Environment:
    text = textwrap.dedent(f"""\
        hosts:
          h1: {{address: 10.0.0.1}}
        policy: {{require_digest: false}}
        services:
          web:
            image: registry.example/web:v1
            hosts: all
            secrets:
        """) + textwrap.indent(textwrap.dedent(secrets_yaml), "      ")
    snapshot = Snapshot(files={"environments/t/environment.yaml": text.encode(), "environments/t/known_hosts": b"#\n"})
    return schema.load_environment(snapshot, "t")


@pytest.fixture
def identity(tmp_path, monkeypatch):
    from pyrage import x25519

    key = x25519.Identity.generate()
    path = tmp_path / "agent.agekey"
    path.write_text(f"# the agent's age identity\n{key}\n")
    path.chmod(0o600)
    monkeypatch.setenv(secrets.AGE_KEY_ENV, str(path))
    secrets.forget_identities()
    yield key
    secrets.forget_identities()


def ciphertext(value: str, key) -> str:
    return secrets.encrypt(value.encode(), [str(key.to_public())])


def yaml_block(text: str, indent: int) -> str:
    return "|\n" + textwrap.indent(text, " " * indent)


def test_an_encrypted_secret_reaches_the_container_as_an_environment_variable(monkeypatch, identity):
    env = environment(f"- name: api-key\n  env: API_KEY\n  encrypted: {yaml_block(ciphertext(CANARY, identity), 4)}")
    service = env.service("web")
    host = driver(monkeypatch)
    host.create(service, managed.ContainerSpec("t", "rev1", "t-web"))
    created = host.engine.api.created[0]
    assert created["environment"].get("API_KEY") == CANARY
    assert CANARY not in repr(created["labels"])


def test_a_file_secret_is_written_on_stdin_to_a_tmpfs_directory_and_mounted_read_only(monkeypatch, identity):
    env = environment(f"- name: api-key\n  env: API_KEY_FILE\n  as: file\n  encrypted: {yaml_block(ciphertext(CANARY, identity), 4)}")
    host = driver(monkeypatch)
    host.conn = type("Conn", (), {"user": "deploy"})()
    runs = []
    monkeypatch.setattr(secrets, "_run", lambda host, command, stdin, what: runs.append((command, stdin, what)))
    host.create(env.service("web"), managed.ContainerSpec("t", "rev1", "t-web"))
    created = host.engine.api.created[0]
    assert created["environment"] == {"API_KEY_FILE": "/run/secrets/api-key"}
    (mount,) = created["host_config"]["mounts"]
    assert mount["Target"] == "/run/secrets" and mount["ReadOnly"] and mount["Type"] == "bind"
    assert mount["Source"].startswith("/dev/shm/reconciler-secrets.deploy/")
    setup, write = runs
    assert "tmpfs" in setup[0] and "-O" in setup[0] and setup[1] is None  # no input
    assert write[1] == CANARY.encode() and f"{mount['Source']}/api-key" in write[0]
    assert all(CANARY not in command and CANARY not in what for command, _, what in runs)
    assert CANARY not in repr(created)


def test_a_failed_create_removes_the_secret_files(monkeypatch, identity):
    env = environment(f"- name: api-key\n  as: file\n  encrypted: {yaml_block(ciphertext(CANARY, identity), 4)}")
    host = driver(monkeypatch)
    host.conn = type("Conn", (), {"user": "deploy"})()
    runs = []
    monkeypatch.setattr(secrets, "_run", lambda host, command, stdin, what: runs.append(command))

    def refuse(image, **kwargs):
        raise RuntimeError("the engine refused")

    host.engine.api.create_container = refuse
    with pytest.raises(RuntimeError):
        host.create(env.service("web"), managed.ContainerSpec("t", "rev1", "t-web"))
    assert runs[-1].startswith("rm -rf -- /dev/shm/reconciler-secrets.deploy/")


def test_the_keyed_digest_follows_the_value_not_the_ciphertext_and_reveals_nothing(identity):
    first = environment(f"- name: api-key\n  encrypted: {yaml_block(ciphertext(CANARY, identity), 4)}")
    again = environment(f"- name: api-key\n  encrypted: {yaml_block(ciphertext(CANARY, identity), 4)}")
    rotated = environment(f"- name: api-key\n  encrypted: {yaml_block(ciphertext(CANARY + '-rotated', identity), 4)}")
    # Unresolved, the hash follows the (public) ciphertext: a rotation already changes it.
    assert managed.config_hash(first.service("web")) != managed.config_hash(rotated.service("web"))
    a, b, c = (secrets.resolve(e).service("web") for e in (first, again, rotated))
    assert a.secrets[0].digest.startswith("hmac-sha256:")
    assert managed.config_hash(a) == managed.config_hash(b)  # re-encrypting the same value changes nothing
    assert managed.config_hash(a) != managed.config_hash(c)  # a new value redeploys
    plain = __import__("hashlib").sha256(CANARY.encode()).hexdigest()
    summary = repr(managed.spec_summary(a)) + managed.config_hash(a)
    assert CANARY not in summary and plain[:12] not in summary
    # Another agent's key gives another digest: the digest is no plain hash.
    from pyrage import x25519

    assert secrets.digest("api-key", CANARY.encode(), x25519.Identity.generate()) != a.secrets[0].digest


def test_without_the_agent_key_or_with_another_one_the_refusal_names_the_secret_not_the_value(tmp_path, monkeypatch, identity):
    from pyrage import x25519

    env = environment(f"- name: api-key\n  encrypted: {yaml_block(ciphertext(CANARY, identity), 4)}")
    other = tmp_path / "other.agekey"
    other.write_text(f"{x25519.Identity.generate()}\n")
    other.chmod(0o600)
    monkeypatch.setenv(secrets.AGE_KEY_ENV, str(other))
    with pytest.raises(secrets.SecretUnreadable) as refused:
        secrets.resolve(env)
    assert "t/web: secret 'api-key'" in str(refused.value) and "none of the agent's keys" in str(refused.value)
    monkeypatch.delenv(secrets.AGE_KEY_ENV)
    with pytest.raises(secrets.SecretUnreadable, match="RECONCILER_AGE_KEY"):
        secrets.resolve(env)
    other.chmod(0o644)
    monkeypatch.setenv(secrets.AGE_KEY_ENV, str(other))
    with pytest.raises(secrets.SecretUnreadable, match="chmod 600"):
        secrets.identities()


@pytest.mark.parametrize("value, said", [
    ('"..."', "expected an armored age ciphertext"),
    ('"age1qyz..."', "expected an armored age ciphertext"),
    ("|\n" + " " * 10 + "-----BEGIN AGE ENCRYPTED FILE-----\n" + " " * 10 + "not base64!\n" + " " * 10 + "-----END AGE ENCRYPTED FILE-----\n", "not base64"),
    ("|\n" + " " * 10 + "-----BEGIN AGE ENCRYPTED FILE-----\n" + " " * 10 + "aGVsbG8gd29ybGQ=\n" + " " * 10 + "-----END AGE ENCRYPTED FILE-----\n", "not an age file"),
])
def test_a_value_that_is_no_age_ciphertext_is_refused_where_it_is_written(value, said):
    text = textwrap.dedent("""\
        hosts:
          h1: {address: 10.0.0.1}
        policy: {require_digest: false}
        services:
          web:
            image: registry.example/web:v1
            hosts: all
            secrets:
              - name: api-key
                encrypted: """) + value + "\n"
    problems = schema.validate(Snapshot(files={"environments/t/environment.yaml": text.encode(), "environments/t/known_hosts": b"#\n"}), "t")
    assert len(problems) == 1 and problems[0].startswith("environments/t/environment.yaml:10:") and said in problems[0], problems


def test_as_file_needs_no_variable_and_two_secrets_cannot_share_one():
    text = textwrap.dedent("""\
        hosts:
          h1: {address: 10.0.0.1}
        policy: {require_digest: false}
        services:
          web:
            image: registry.example/web:v1
            hosts: all
            secrets:
              - {name: one, file: /etc/one, as: file}
              - {name: two, env: SAME, file: /etc/two}
              - {name: three, env: SAME, file: /etc/three}
              - {name: four, file: /etc/four, as: envelope}
        """)
    problems = schema.validate(Snapshot(files={"environments/t/environment.yaml": text.encode(), "environments/t/known_hosts": b"#\n"}), "t")
    assert any(":11:" in p and "'SAME' is already set by secret 'two'" in p for p in problems), problems
    assert any(":12:" in p and "must be one of env, file" in p for p in problems), problems
    assert len(problems) == 2


def test_removing_a_container_removes_its_secrets_directory_and_nothing_else(monkeypatch):
    host = driver(monkeypatch)
    host.conn = type("Conn", (), {"user": "deploy"})()
    mine = "/dev/shm/reconciler-secrets.deploy/" + "ab" * 16
    attrs = {"c1": {"Mounts": [{"Destination": "/run/secrets", "Source": mine}]},
             "c2": {"Mounts": [{"Destination": "/run/secrets", "Source": "/srv/elsewhere"}]},
             "c3": {"Mounts": [{"Destination": "/run/secrets", "Source": "/dev/shm/reconciler-secrets.root/" + "cd" * 16}]}}
    removed, runs = [], []
    host.engine.api.inspect_container = lambda cid: attrs[cid]
    host.engine.api.remove_container = lambda cid, force: removed.append(cid)
    monkeypatch.setattr(secrets, "_run", lambda host, command, stdin, what: runs.append(command))
    for cid in ("c1", "c2", "c3"):
        host.remove(cid)
    assert removed == ["c1", "c2", "c3"]
    assert runs == [f"rm -rf -- {mine}"]  # another user's directory, or a path not ours, is left alone
