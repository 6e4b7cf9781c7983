"""The deploy engine on the real fleet: three hosts with their own dockerd and
sshd, images pulled by digest from the local registry.

Each test uses its own environment name and host port, so tests of other
modules sharing the fleet never see its containers.
"""

from __future__ import annotations

import pytest

from reconciler.adapters import gitlog
from reconciler.cli.main import main
from reconciler.engine.deploy import deploy_target
from reconciler.errors import HostUnreachable
from tests.envrepo import containers, deploy, make_env_repo, remove_containers, serving

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def service(image: str, port: int, *, batch: int = 1, extra: str = "") -> str:
    return f"""
    web:
      image: {image}
      hosts: all
      ports: ["{port}:8080"]
      health: {{type: http, path: /health, interval: 500ms, successes: 2, deadline: 8s}}
      rollout: {{batch_size: {batch}}}
      stop_timeout: 2s
    {extra}
    """


@pytest.fixture
def env_repo(fleet, tmp_path, request):
    name = "t" + request.node.name.replace("test_", "").replace("_", "")[:10]
    repo = make_env_repo(tmp_path / "envrepo", fleet, name)
    yield repo
    remove_containers(fleet, f"{name}-")


def test_v1_then_v2_every_host_answers_v2_and_keeps_v1_for_rollback(fleet, env_repo):
    env_repo.commit(service(fleet.images["v1"], 18101))
    first = deploy(env_repo)
    assert first.outcome.result == "deployed"
    assert set(serving(fleet, 18101).values()) == {"demo-web v1"}

    env_repo.commit(service(fleet.images["v2"], 18101, batch=2), message="web v2")
    second = deploy(env_repo)
    assert second.outcome.result == "deployed", second.outcome.failure
    assert serving(fleet, 18101) == {h.name: "demo-web v2" for h in fleet.hosts}
    for host, seen in containers(fleet, env_repo.env).items():
        names = sorted(name for name, _, _ in seen)
        assert names[0] == f"{env_repo.env}-web" and names[1].startswith(f"{env_repo.env}-web-old-"), (host, names)

    # In sync now: apply changes nothing and says so.
    before = containers(fleet, env_repo.env)
    third = deploy(env_repo)
    assert third.plan.in_sync and third.outcome is None
    assert containers(fleet, env_repo.env) == before


def test_never_healthy_image_rolls_back_every_host(fleet, env_repo):
    env_repo.commit(service(fleet.images["v1"], 18102))
    assert deploy(env_repo).outcome.result == "deployed"
    bad = env_repo.commit(service(fleet.images["v3-unhealthy"], 18102), message="bad web")
    # Through the CLI, for the exit status and the printed evidence.
    code = main(["apply", "--repo", str(env_repo.path), "--env", env_repo.env, "--identity", env_repo.identity, "--yes"])
    assert code == 3
    assert serving(fleet, 18102) == {h.name: "demo-web v1" for h in fleet.hosts}
    # The CLI runs the same engine as the agent: the failure is noted and reverted in git.
    repo = gitlog.open_repo(env_repo.path)
    assert [a.result for a in gitlog.attempts(repo, bad, env_repo.env)] == ["rolled-back"]
    assert f"This reverts commit {bad}" in repo[gitlog.branch_head(repo, "refs/heads/main")].message
    # The same commit again: it fails the same way, evidence included.
    result = deploy(env_repo, bad)
    assert result.outcome.result == "rolled-back"
    assert "health check failed" in result.outcome.failure
    assert any("/health -> 500" in line for line in result.outcome.evidence), result.outcome.evidence
    assert any(line.startswith("logs:") for line in result.outcome.evidence)
    assert serving(fleet, 18102) == {h.name: "demo-web v1" for h in fleet.hosts}


def test_image_missing_from_registry_changes_nothing(fleet, env_repo):
    env_repo.commit(service(fleet.images["v1"], 18103))
    deploy(env_repo)
    before = containers(fleet, env_repo.env)
    missing = fleet.image_repository + ":gone@sha256:" + "1" * 64
    gone = env_repo.commit(service(missing, 18103), message="missing image")
    run = deploy(env_repo).result
    assert run.result in ("refused", "error") and run.outcome is None, run
    assert "h1" in run.message or "h2" in run.message or "h3" in run.message
    assert "gone" in run.message or "1111" in run.message
    assert containers(fleet, env_repo.env) == before
    # Recorded as what it was: nothing was deployed.
    (attempt,) = gitlog.attempts(gitlog.open_repo(env_repo.path), gone, env_repo.env)
    assert attempt.result == run.result and attempt.message == run.message


def test_unreachable_host_before_the_run_changes_nothing(fleet, env_repo):
    from reconciler.sandbox import fleet as sandbox_fleet
    from reconciler.sandbox import sshd
    from reconciler.sandbox.layout import layout

    env_repo.commit(service(fleet.images["v1"], 18104))
    deploy(env_repo)
    before = containers(fleet, env_repo.env)
    env_repo.commit(service(fleet.images["v2"], 18104), message="web v2")
    sshd.stop(layout().host(2))
    try:
        run = deploy(env_repo).result
        assert (run.result, run.kind, run.reason) == ("error", "transient", HostUnreachable.__name__), run
        assert "h2" in run.message
        assert containers(fleet, env_repo.env) == before
    finally:
        sandbox_fleet.up(len(fleet.hosts))
    # Back again: the next reconcile converges every host.
    assert deploy(env_repo).outcome.result == "deployed"
    assert serving(fleet, 18104) == {h.name: "demo-web v2" for h in fleet.hosts}


def test_container_stopped_by_hand_is_drift_healed_when_policy_says_so(fleet, env_repo):
    import docker

    env_repo.commit(service(fleet.images["v1"], 18105), policy="drift: report")
    deploy(env_repo)
    host = fleet.hosts[0]
    client = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41")
    client.containers.get(f"{env_repo.env}-web").stop(timeout=2)
    client.close()

    reported = deploy(env_repo)
    assert reported.plan.in_sync and reported.outcome is None
    # (unmanaged containers others left on the shared hosts are findings too: not this test's business)
    assert [(f.host, f.kind) for f in reported.plan.findings if f.kind != "unmanaged"] == [("h1", "drift")]
    assert serving(fleet, 18105)["h1"].startswith("no answer")

    env_repo.commit(service(fleet.images["v1"], 18105), policy="drift: heal", message="heal drift")
    healed = deploy(env_repo)
    assert healed.outcome.result == "deployed"
    assert serving(fleet, 18105) == {h.name: "demo-web v1" for h in fleet.hosts}


def test_removed_service_is_removed_only_with_pruning_on(fleet, env_repo):
    two = service(fleet.images["v1"], 18106) + f"""
    api:
      image: {fleet.images["v2"]}
      hosts: [h1]
      health: {{type: tcp, port: 8080, interval: 500ms, deadline: 8s}}
    """
    env_repo.commit(two)
    deploy(env_repo)
    api = f"{env_repo.env}-api"
    assert any(name == api for name, _, _ in containers(fleet, env_repo.env)["h1"])

    env_repo.commit(service(fleet.images["v1"], 18106), policy="prune: false", message="drop api")
    kept = deploy(env_repo)
    assert [(f.host, f.kind) for f in kept.plan.findings] == [("h1", "prune-disabled")]
    assert any(name == api for name, _, _ in containers(fleet, env_repo.env)["h1"])

    env_repo.commit(service(fleet.images["v1"], 18106), policy="prune: true", message="prune api")
    pruned = deploy(env_repo)
    assert pruned.outcome.result == "deployed"
    assert not any(name.startswith(api) for name, _, _ in containers(fleet, env_repo.env)["h1"])
    assert set(serving(fleet, 18106).values()) == {"demo-web v1"}


def test_rollback_command_restores_the_retained_version_on_every_host(fleet, env_repo):
    first = env_repo.commit(service(fleet.images["v1"], 18107))
    deploy(env_repo)
    env_repo.commit(service(fleet.images["v2"], 18107), message="web v2")
    deploy(env_repo)
    assert set(serving(fleet, 18107).values()) == {"demo-web v2"}
    argv = ["rollback", "--repo", str(env_repo.path), "--env", env_repo.env, "--identity", env_repo.identity, "--yes"]
    assert main(argv + ["--to", first[:10]]) == 0
    assert serving(fleet, 18107) == {h.name: "demo-web v1" for h in fleet.hosts}
    # Back to v2 the same way: v2 is now the retained one.
    assert main(argv) == 0
    assert serving(fleet, 18107) == {h.name: "demo-web v2" for h in fleet.hosts}
    # A revision nobody deployed: refused, nothing changes.
    before = containers(fleet, env_repo.env)
    assert main(argv + ["--to", "deadbeef"]) == 1
    assert containers(fleet, env_repo.env) == before


def test_plan_exit_codes_in_sync_0_changes_pending_10_error_1(fleet, env_repo, capsys):
    env_repo.commit(service(fleet.images["v1"], 18108))
    argv = ["plan", "--repo", str(env_repo.path), "--env", env_repo.env, "--identity", env_repo.identity]
    assert main(argv) == 10  # reconciler.cli.exitcodes.CHANGES
    out = capsys.readouterr().out
    assert "+ h1/web: create" in out and fleet.images["v1"] in out
    deploy(env_repo)
    assert main(argv) == 0
    assert "in sync" in capsys.readouterr().out
    assert main(argv + ["--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["in_sync"] is True
    # Bad input: an unknown environment is an error (1), and changes nothing.
    assert main(["plan", "--repo", str(env_repo.path), "--env", "nope", "--identity", env_repo.identity]) == 1


def _cut_ssh(netns: str) -> None:
    """Kill every sshd of one sandbox host, its open sessions included: the
    host drops off the network for reconciler like a crashed machine would."""
    import os
    import signal
    import subprocess

    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True).stdout.split()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == "sshd":
                    os.kill(int(pid), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def test_host_lost_mid_deploy_others_roll_back_and_next_reconcile_converges(fleet, env_repo):
    from reconciler.sandbox import fleet as sandbox_fleet

    env_repo.commit(service(fleet.images["v1"], 18109))
    deploy(env_repo)
    env_repo.commit(service(fleet.images["v2"], 18109), message="web v2")

    def cut_h2(event, **fields):
        if event == "begin" and fields.get("step") == "CheckHealth" and fields.get("host") == "h2":
            _cut_ssh(fleet.host("h2").netns)

    try:
        result = deploy_target(env_repo.target(), report_progress=cut_h2)
        assert result.outcome.result == "rolled-back" and result.outcome.transient
        assert "h2" in result.outcome.failure
        answers = serving(fleet, 18109)
        assert answers["h1"] == "demo-web v1" and answers["h3"] == "demo-web v1"
        assert answers["h2"] in ("demo-web v1", "demo-web v2")  # never a host with neither
    finally:
        sandbox_fleet.up(len(fleet.hosts))
    again = deploy(env_repo)
    assert again.outcome.result == "deployed", again.outcome.failure
    assert serving(fleet, 18109) == {h.name: "demo-web v2" for h in fleet.hosts}
