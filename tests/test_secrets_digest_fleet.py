"""The keyed digest in the config hash, on the real fleet (issue 12): with
the environment resolved by ``secrets.resolve`` where the engine loads it
(engine/recovery.py ``load_desired``; patched in here, see the report), a
secret encrypted again to the same value changes nothing, and a new value
redeploys.  This is the seam the lead wires into the engine."""

from __future__ import annotations

import io
import sys

import pytest
from pyrage import x25519

from reconciler.adapters import secrets
from reconciler.cli.main import main
from reconciler.engine import recovery
from reconciler.engine.deploy import deploy_target
from tests.envrepo import containers, make_env_repo, remove_containers

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

ENV_NAME = "zsechmac"
SERVICE = """
web:
  image: {image}
  hosts: [h2]
  health: {{type: running, interval: 300ms, successes: 1, deadline: 20s}}
  stop_timeout: 1s
"""


@pytest.fixture
def env_repo(fleet, tmp_path, monkeypatch):
    remove_containers(fleet, f"{ENV_NAME}-")
    key = x25519.Identity.generate()
    keyfile = tmp_path / "agent.agekey"
    keyfile.write_text(f"{key}\n")
    keyfile.chmod(0o600)
    monkeypatch.setenv(secrets.AGE_KEY_ENV, str(keyfile))
    secrets.forget_identities()
    load = recovery.load_desired
    monkeypatch.setattr(recovery, "load_desired", lambda run, commit: (lambda e, p: (secrets.resolve(e), p))(*load(run, commit)))
    repo = make_env_repo(tmp_path / "envrepo", fleet, ENV_NAME)
    (repo.path / "environments" / ENV_NAME / "age-recipients").write_text(f"{key.to_public()}\n")
    yield repo
    remove_containers(fleet, f"{ENV_NAME}-")
    secrets.forget_identities()


def set_and_commit(repo, value: str, *extra: str) -> None:
    saved, sys.stdin = sys.stdin, io.TextIOWrapper(io.BytesIO(value.encode()))
    try:
        assert main(["secret", "set", "--repo", str(repo.path), ENV_NAME, "api-key", *extra]) == 0
    finally:
        sys.stdin = saved
    text = (repo.path / "environments" / ENV_NAME / "environment.yaml").read_text()
    repo.commit(text.split("services:\n", 1)[1], message=f"api-key {value[:3]}")


def active(fleet) -> tuple[str, str]:
    (found,) = [(name, cid) for name, cid, _ in containers(fleet, ENV_NAME)["h2"] if name == f"{ENV_NAME}-web"]
    return found


def test_the_same_value_encrypted_again_changes_nothing_and_a_new_value_redeploys(fleet, env_repo):
    env_repo.commit(SERVICE.format(image=fleet.images["v1"]), message="web")
    set_and_commit(env_repo, "first-value", "--service", "web")
    first = deploy_target(env_repo.target(), report_progress=lambda *a, **k: None)
    assert first.outcome.result == "deployed", first.outcome.failure
    _, before = active(fleet)

    set_and_commit(env_repo, "first-value")  # a new ciphertext of the same value
    same = deploy_target(env_repo.target(), report_progress=lambda *a, **k: None)
    assert same.plan.in_sync and same.outcome is None, same.plan
    assert active(fleet)[1] == before

    set_and_commit(env_repo, "second-value")
    rotated = deploy_target(env_repo.target(), report_progress=lambda *a, **k: None)
    assert rotated.outcome.result == "deployed", rotated.outcome.failure
    assert active(fleet)[1] != before
