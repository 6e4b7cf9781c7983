"""The demo's parts that need no fleet: the release commits' edits, the app
images, the log follower.  (The story on the fleet: test_demo_story_fleet.py.)"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from ruamel.yaml import YAML

from reconciler.cli import demo
from reconciler.cli.demo_follow import LogTail, describe
from reconciler.sandbox import demo_app, images

REPO = Path(__file__).resolve().parents[1]
IMAGE = "10.213.0.1:5000/demo/app:1@sha256:" + "ab" * 32


def example() -> str:
    return (REPO / "desired-state" / "environments" / "production" / "environment.yaml").read_text()


def test_the_first_release_adds_migrations_and_the_demo_deadline_and_keeps_every_comment():
    before = example()
    after = demo.release_text(before, IMAGE, first=True)
    web = YAML(typ="safe").load(after)["services"]["web"]
    assert web["image"] == IMAGE and web["migrations"] == {"path": "/migrations"}
    assert web["health"]["deadline"] == demo.DEMO_HEALTH_DEADLINE
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert all(c in after for c in comments)
    # Only those three lines differ.
    assert len(set(after.splitlines()) - set(before.splitlines())) == 3


def test_later_releases_change_the_image_alone():
    first = demo.release_text(example(), IMAGE, first=True)
    second = demo.release_text(first, IMAGE.replace(":1@", ":2@"), first=False)
    assert [a for a, b in zip(first.splitlines(), second.splitlines()) if a != b] == [f"    image: {IMAGE}"]


def test_release_images_are_reproducible_and_ship_their_migrations():
    base = images.base_layer_tar(b"busybox", "#!/bin/sh\n", "#!/bin/sh\n")
    one = demo_app.build_release(demo_app.RELEASES[1], base, "amd64")
    assert one.digest == demo_app.build_release(demo_app.RELEASES[1], base, "amd64").digest
    assert one.digest != demo_app.build_release(demo_app.RELEASES[2], base, "amd64").digest
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(one.layers[-1].data))) as tar:
        shipped = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
    assert shipped == {f"migrations/{name}": text for name, text in demo_app.RELEASES[1].migrations}
    config = json.loads(one.config.data)
    assert len(config["rootfs"]["diff_ids"]) == len(one.layers) == 3
    assert config["config"]["Labels"]["reconciler.demo.mode"] == "healthy"
    assert json.loads(demo_app.build_release(demo_app.RELEASES[2], base, "amd64").config.data)[
        "config"]["Labels"]["reconciler.demo.mode"] == "unhealthy"


def test_the_log_tail_returns_whole_lines_only(tmp_path):
    log = tmp_path / "agent.log"
    log.write_text('{"event": "reconcile-begin", "commit": "abcdef123456", "reason": "ref:refs/heads/main"}\n{"event": "ste')
    tail = LogTail(log)
    assert [e["event"] for e in tail.events()] == ["reconcile-begin"]
    with log.open("a") as fh:
        fh.write('p-failed", "host": "h1", "service": "web", "step": "CheckHealth", "error": "not healthy"}\nTraceback\n')
    later = tail.events()
    assert [e["event"] for e in later] == ["step-failed", "output"]
    assert describe(later[0]) == "h1/web: CheckHealth FAILED: not healthy"
    assert describe(later[1]) == "agent: Traceback"


def test_what_the_follower_says_about_the_events_of_a_deploy():
    assert describe({"event": "reconcile-begin", "commit": "abcdef1234567890", "reason": "ref:refs/heads/main"}) \
        == "agent: reconciling abcdef123456 (woken by a push)"
    assert describe({"event": "step-done", "step": "db-backup",
                     "reason": "/var/x/backups/db/2026_abc_pre-deploy.dump verified in 0.1s"}) \
        == "database: 2026_abc_pre-deploy.dump verified in 0.1s"
    assert describe({"event": "step-begin", "host": "h2", "service": "web", "step": "Start", "reason": f"run {IMAGE}"}) \
        == "h2/web: starting demo/app:1"
    assert describe({"event": "step-done", "host": "h2", "service": "web", "step": "Pull"}) is None
    assert describe({"event": "reconcile-end", "commit": None, "reason": "NoBranch"}) \
        == "agent: no branch yet; waiting for a first push"
    assert describe({"event": "reverted", "revert": "f" * 40}).startswith("git: the agent committed the revert ffffffffffff")


def test_each_host_entry_gets_its_engine_socket_in_its_own_style(tmp_path):
    from types import SimpleNamespace

    from reconciler.adapters.source import snapshot_worktree
    from reconciler.core import schema

    sandbox = SimpleNamespace(hosts=[SimpleNamespace(name=f"h{i}", docker_socket=f"/srv/sandbox/h{i}/docker.sock")
                                     for i in (1, 2, 3)])
    for env in ("dev", "production", "staging"):
        text = (REPO / "desired-state" / "environments" / env / "environment.yaml").read_text()
        pinned = demo.pin_docker_sockets(text, sandbox)
        assert demo.pin_docker_sockets(pinned, sandbox) == pinned  # a second pin changes nothing
        base = tmp_path / env / "environments" / env
        base.mkdir(parents=True)
        (base / "environment.yaml").write_text(pinned)
        (base / "known_hosts").write_text("# pins\n")
        loaded = schema.load_environment(snapshot_worktree(tmp_path / env), env)
        assert {h.name: h.docker_socket for h in loaded.hosts} == {
            h.name: f"/srv/sandbox/{h.name}/docker.sock" for h in loaded.hosts}
        # Nothing else changed: every line of the example is still there.
        assert set(text.splitlines()) - set(pinned.splitlines()) <= {
            line for line in text.splitlines() if line.lstrip().startswith(("h1:", "h2:", "h3:")) and "{" in line}
