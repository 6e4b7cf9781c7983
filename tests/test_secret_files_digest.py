"""Host-file secrets in the config hash (issue 12): a rotated file changes
the service's config hash, the same content does not, and the digest says
nothing of the value.  Host drivers are stand-ins that hold the files; the
fleet test (tests/test_secret_rotation_fleet.py) rotates real files."""

from __future__ import annotations

import textwrap

import pytest

from reconciler.adapters import secret_files
from reconciler.core import managed, model, schema
from reconciler.core.schema import Snapshot
from reconciler.errors import SecretUnreadable

CANARY = "canary-host-file-2d9e41"


class Host:
    def __init__(self, files: dict[str, str], identity: str | None):
        self.files, self.identity_file, self.reads = files, identity, []

    def read_secret_file(self, path: str) -> str:
        self.reads.append(path)
        if path not in self.files:
            raise SecretUnreadable(f"read secret file {path}: No such file", host="h")
        return self.files[path]


def environment() -> model.Environment:
    text = textwrap.dedent("""\
        hosts:
          h1: {address: 10.0.0.1}
          h2: {address: 10.0.0.2}
        policy: {require_digest: false}
        services:
          web:
            image: registry.example/web:v1
            hosts: all
            secrets:
              - {name: db-password, env: DB_PASSWORD, file: /etc/app/db}
              - {name: tls, file: /etc/app/tls, as: file}
          other:
            image: registry.example/other:v1
            hosts: [h1]
        """)
    snapshot = Snapshot(files={"environments/t/environment.yaml": text.encode(), "environments/t/known_hosts": b"#\n"})
    return schema.load_environment(snapshot, "t")


@pytest.fixture
def identity(tmp_path):
    path = tmp_path / "id_ed25519"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key, only key material\n-----END OPENSSH PRIVATE KEY-----\n")
    return str(path)


def hashes(env: model.Environment) -> dict[str, str]:
    return {s.name: managed.config_hash(s) for s in env.services}


def hosts(identity, db="first", tls="cert-1", db_h2=None):
    return {"h1": Host({"/etc/app/db": db, "/etc/app/tls": tls}, identity),
            "h2": Host({"/etc/app/db": db_h2 or db, "/etc/app/tls": tls}, identity)}


def test_rotating_a_host_file_changes_the_config_hash_and_the_same_content_does_not(identity):
    env = environment()
    first = secret_files.resolve(env, hosts(identity))
    again = secret_files.resolve(env, hosts(identity))
    assert hashes(first) == hashes(again)
    assert hashes(first)["web"] != hashes(env)["web"], "the reference's hash was kept"
    rotated = secret_files.resolve(env, hosts(identity, db="second"))
    assert hashes(rotated)["web"] != hashes(first)["web"]
    assert hashes(rotated)["other"] == hashes(first)["other"] == hashes(env)["other"]
    assert hashes(secret_files.resolve(env, hosts(identity, tls="cert-2")))["web"] != hashes(first)["web"]
    # A file rotated on one host only: the service redeploys (one digest over every host's content).
    assert hashes(secret_files.resolve(env, hosts(identity, db_h2="second")))["web"] != hashes(first)["web"]


def test_the_digest_is_keyed_by_the_ssh_identity_and_reveals_nothing(identity, tmp_path):
    env = environment()
    drivers = hosts(identity, db=CANARY)
    resolved = secret_files.resolve(env, drivers)
    digests = [s.digest for s in resolved.service("web").secrets]
    assert all(d.startswith("hmac-sha256:") for d in digests)
    summary = repr(managed.spec_summary(resolved.service("web"))) + managed.config_hash(resolved.service("web"))
    assert CANARY not in summary and CANARY not in repr(resolved)
    import hashlib

    assert hashlib.sha256(CANARY.encode()).hexdigest()[:12] not in summary
    other = tmp_path / "other_key"
    other.write_text("another identity\n")
    assert [s.digest for s in secret_files.resolve(env, hosts(str(other), db=CANARY)).service("web").secrets] != digests
    assert sorted(drivers["h1"].reads) == ["/etc/app/db", "/etc/app/tls"]


def test_a_missing_file_stops_the_run_before_anything_and_fakes_without_an_identity_keep_the_reference_hash(identity):
    env = environment()
    broken = hosts(identity)
    del broken["h2"].files["/etc/app/db"]
    with pytest.raises(SecretUnreadable, match="/etc/app/db"):
        secret_files.resolve(env, broken)
    assert hashes(secret_files.resolve(env, hosts(None))) == hashes(env)
