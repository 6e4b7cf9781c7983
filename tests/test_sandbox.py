"""The local fleet: reproducible demo images (unit), and the real sandbox (fleet).

The fleet tests run in file order and the last ones take the fleet down (and
kill it) and bring it up again, several times while both cores are kept
busy, leaving it up for the rest of the session.  Readiness itself (a late
banner, a pidfile being written, a part that never answers) is unit-tested
on loopback in tests/test_sandbox_readiness.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.errors import HostKeyMismatch, SandboxError, UnknownHostKey
from reconciler.sandbox import description, images, procs, sshd

FAKE_BUSYBOX = b"\x7fELF fake busybox for tests" * 100


def _build(busybox: bytes = FAKE_BUSYBOX, arch: str = "amd64"):
    return images.build_all(busybox, arch, "#!/bin/sh\necho entry\n", "#!/bin/sh\necho handler\n")


# --- unit: the image builder --------------------------------------------------------


def test_same_inputs_give_the_same_digests() -> None:
    first, second = _build(), _build()
    assert [i.digest for i in first] == [i.digest for i in second]
    assert [i.manifest for i in first] == [i.manifest for i in second]
    assert len({i.digest for i in first}) == len(images.VARIANTS)


def test_another_busybox_gives_other_digests() -> None:
    assert {i.digest for i in _build()}.isdisjoint({i.digest for i in _build(FAKE_BUSYBOX + b"x")})


def test_manifest_digest_is_the_sha256_of_its_bytes_and_names_every_blob() -> None:
    for image in _build():
        assert image.digest == "sha256:" + hashlib.sha256(image.manifest).hexdigest()
        manifest = json.loads(image.manifest)
        assert manifest["mediaType"] == images.MANIFEST_TYPE
        assert manifest["config"]["digest"] == image.config.digest
        assert manifest["config"]["size"] == len(image.config.data)
        assert [layer["digest"] for layer in manifest["layers"]] == [b.digest for b in image.layers]


def test_variants_share_the_base_layer_and_differ_in_config() -> None:
    built = _build()
    assert len({i.layers[0].digest for i in built}) == 1
    for image in built:
        config = json.loads(image.config.data)
        assert config["config"]["Labels"]["org.opencontainers.image.version"] == image.variant.version
        assert f"DEMO_VERSION={image.variant.version}" in config["config"]["Env"]
        assert config["created"] == images.CREATED
        # diff_ids are the uncompressed layers' digests.
        assert config["rootfs"]["diff_ids"] == [images.sha256_digest(gzip.decompress(b.data))
                                                for b in image.layers]


def test_layers_have_fixed_metadata_and_order() -> None:
    layer = _build()[0].layers[0].data
    assert layer[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(images.MTIME, 0, 0, "", "")}
    assert {"bin/busybox", "bin/sh", "bin/nc", "entrypoint.sh", "bin/demo-handler"} <= set(names)
    assert next(m for m in members if m.name == "bin/sh").linkname == "busybox"


def test_architecture_follows_the_machine() -> None:
    assert images.docker_arch("x86_64") == "amd64"
    assert images.docker_arch("aarch64") == "arm64"
    assert json.loads(_build(arch="arm64")[0].config.data)["architecture"] == "arm64"


# --- unit: small pure pieces ----------------------------------------------------------


def test_known_hosts_line_brackets_non_default_ports() -> None:
    assert sshd.known_hosts_line("10.213.0.11", 22, "ssh-ed25519 AAAAkey c") == "10.213.0.11 ssh-ed25519 AAAAkey"
    assert sshd.known_hosts_line("10.213.0.11", 2222, "ssh-ed25519 AAAAkey") == "[10.213.0.11]:2222 ssh-ed25519 AAAAkey"


def test_mounts_under_lists_deepest_first_and_unescapes() -> None:
    info = "\n".join([
        "36 35 98:0 / /var/lib/s rw - ext4 /dev/root rw",
        "37 36 0:1 / /var/lib/s/h1/docker/overlay2/abc/merged rw - overlay overlay rw",
        "38 36 0:2 / /var/lib/s/h1/run/netns/x rw - nsfs nsfs rw",
        "39 36 0:3 / /var/lib/s\\040x/y rw - tmpfs t rw",
        "40 36 0:4 / /var/lib/sandbox rw - tmpfs t rw",
    ])
    assert procs.mounts_under(Path("/var/lib/s"), info) == [
        "/var/lib/s/h1/docker/overlay2/abc/merged", "/var/lib/s/h1/run/netns/x", "/var/lib/s"]
    assert procs.mounts_under(Path("/var/lib/s x"), info) == ["/var/lib/s x/y"]


def test_description_round_trips_through_json() -> None:
    host = description.SandboxHost("h1", "10.213.0.11", 22, "root", "/i", "/k", "/s", "rcl-h1")
    sandbox = description.Sandbox("/state", (host,), "10.213.0.1:5000", "10.213.0.1:5000/demo/web",
                                  {"v1": "r:v1@sha256:00"}, "postgresql://x", "/i", "/k", 1.5)
    again = description.from_json(json.loads(json.dumps(sandbox.to_json())))
    assert again == description.from_json(sandbox.to_json())
    assert again.host("h1") == host and dict(again.images) == {"v1": "r:v1@sha256:00"}


def test_without_root_up_says_root_is_needed(monkeypatch) -> None:
    from reconciler.sandbox import fleet

    monkeypatch.setattr(fleet.os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match="needs root"):
        fleet.up(1)


# --- fleet ------------------------------------------------------------------------


def _engine(host):
    from reconciler.adapters.dialstdio import engine_client
    from reconciler.adapters.ssh import connect

    conn = connect(host.ssh_access())
    return conn, engine_client(conn, host=host.name)


def _http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode().strip()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode().strip()
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.fleet
def test_description_on_disk_matches_what_up_returned(fleet) -> None:
    # Another session may have run ``up`` since: only the timing may differ.
    assert replace(description.load(), elapsed_seconds=0) == replace(fleet, elapsed_seconds=0)
    assert [h.name for h in fleet.hosts] == ["h1", "h2", "h3"]
    assert set(fleet.images) == {v.tag for v in images.VARIANTS}
    assert fleet.database_dsn


@pytest.mark.fleet
def test_pinned_ssh_lists_the_containers_of_each_host(fleet) -> None:
    for host in fleet.hosts:
        conn, client = _engine(host)
        try:
            assert isinstance(client.containers.list(all=True), list)
            # The engine behind the host's SSH is that host's own, not another's.
            assert client.info()["DockerRootDir"] == f"{fleet.state_dir}/{host.name}/docker"
        finally:
            client.close()
            conn.close()


@pytest.mark.fleet
def test_image_by_digest_runs_on_two_hosts_with_the_same_version(fleet) -> None:
    reference = fleet.images["v1"]
    by_digest = reference.split(":v1@")[0] + "@" + reference.split("@")[1]
    name = f"rcl-test-{uuid.uuid4().hex[:8]}"
    answers = []
    for host in fleet.hosts[:2]:
        conn, client = _engine(host)
        try:
            client.images.pull(by_digest)
            container = client.containers.run(by_digest, detach=True, name=name, ports={"8080/tcp": 18081})
            try:
                answers.append(_http_get(f"http://{host.address}:18081/"))
                assert _http_get(f"http://{host.address}:18081/health") == (200, "ok")
                assert container.image.attrs["RepoDigests"] == [by_digest]
            finally:
                container.remove(force=True)
        finally:
            client.close()
            conn.close()
    assert answers == [(200, "demo-web v1"), (200, "demo-web v1")]


@pytest.mark.fleet
def test_a_host_whose_key_differs_from_the_pinned_one_is_refused(fleet, tmp_path) -> None:
    from reconciler.adapters.ssh import connect

    h1 = fleet.hosts[0]
    # Pin h2's key (a valid key, but not h1's) for h1's address.
    h2_key = (Path(fleet.state_dir) / "h2" / "ssh_host_ed25519_key.pub").read_text()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(sshd.known_hosts_line(h1.address, h1.port, h2_key) + "\n")
    with pytest.raises(HostKeyMismatch) as refused:
        connect(replace(h1.ssh_access(), known_hosts_file=str(wrong)))
    assert refused.value.host == "h1"
    assert "mismatch" in str(refused.value) and str(wrong) in str(refused.value)

    # And a host with no pinned key at all is refused too, not trusted on first use.
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(UnknownHostKey):
        connect(replace(h1.ssh_access(), known_hosts_file=str(empty)))


@pytest.mark.fleet
def test_plain_ssh_runs_docker_ps_on_every_host(fleet) -> None:
    for host in fleet.hosts:
        proc = subprocess.run(
            ["ssh", "-i", host.identity_file, "-o", f"UserKnownHostsFile={host.known_hosts_file}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
             "-p", str(host.port), f"{host.user}@{host.address}", "docker", "ps"],
            capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{host.name}: {proc.stderr}"
        assert proc.stdout.startswith("CONTAINER ID")


@pytest.mark.fleet
def test_demo_variants_behave_as_named(fleet) -> None:
    host = fleet.hosts[2]
    conn, client = _engine(host)
    started = []
    try:
        def run(tag, port, **kw):
            ref = fleet.images[tag]
            client.images.pull(ref.split(f":{tag}@")[0] + "@" + ref.split("@")[1])
            c = client.containers.run(ref.split(f":{tag}@")[0] + "@" + ref.split("@")[1], detach=True,
                                      name=f"rcl-test-{tag}-{uuid.uuid4().hex[:6]}",
                                      ports={"8080/tcp": port}, **kw)
            started.append(c)
            return c

        # The flaky one first and checked at once: its healthy window starts with it.
        run("v4-flaky", 18084, environment={"FAIL_AFTER": "4"})
        assert _http_get(f"http://{host.address}:18084/health") == (200, "ok")
        run("v3-unhealthy", 18083)
        crash = run("v5-crash", 18085)
        assert _http_get(f"http://{host.address}:18083/") == (200, "demo-web v3")
        assert _http_get(f"http://{host.address}:18083/health")[0] == 500
        assert procs.wait_until(lambda: _http_get(f"http://{host.address}:18084/health")[0] == 500,
                                timeout=10, interval=0.5)
        assert crash.wait(timeout=10)["StatusCode"] == 1
        # PID 1 exits on SIGTERM: a stop must not wait out the grace period.
        t0 = time.monotonic()
        started[0].stop(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        for c in started:
            c.remove(force=True)
        client.close()
        conn.close()


@pytest.mark.fleet
def test_up_again_reuses_the_running_fleet(fleet) -> None:
    from reconciler.sandbox import fleet as sandbox_fleet

    again = sandbox_fleet.up(3)
    assert again.hosts == fleet.hosts and dict(again.images) == dict(fleet.images)
    assert sandbox_fleet.status().all_up


@pytest.mark.takes_fleet_down
@pytest.mark.fleet
def test_down_leaves_nothing_and_up_works_again(fleet) -> None:
    from reconciler.sandbox import fleet as sandbox_fleet
    from reconciler.sandbox import netns

    sandbox_fleet.down()
    left = sandbox_fleet.leftovers()
    assert not left, left
    assert netns.namespaces() == []
    assert procs.mounts_under(Path(fleet.state_dir)) == []
    assert not any(procs.cmdline(pid).startswith(("dockerd", "/usr/sbin/sshd", "containerd"))
                   and fleet.state_dir in procs.cmdline(pid) for pid in procs._all_pids())
    status = sandbox_fleet.status()
    assert not status.registry and not any(h.dockerd or h.sshd or h.netns for h in status.hosts)

    again = sandbox_fleet.up(3)
    assert again.hosts == fleet.hosts and dict(again.images) == dict(fleet.images)
    assert sandbox_fleet.status().all_up


# Two loaded cores, as on the machine where the first `make demo` failed: one
# spinning process per core, and one that writes and fsyncs (dockerd, initdb
# and the registry all fsync while they start).  Each exits by itself after
# BUSY_SECONDS whatever happens to the test, and is killed when it ends.
BUSY_SECONDS = 1200
_SPIN = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end: pass\n"
_FSYNC = """
import os, sys, tempfile, time
end = time.time() + float(sys.argv[1])
fd, path = tempfile.mkstemp(prefix="rcl-busy-")
try:
    while time.time() < end:
        os.pwrite(fd, os.urandom(1 << 20), 0)
        os.fsync(fd)
finally:
    os.close(fd)
    os.unlink(path)
"""


def _keep_both_cores_busy() -> list[subprocess.Popen]:
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN, str(BUSY_SECONDS)]) for _ in range(os.cpu_count() or 2)]
    return spinners + [subprocess.Popen([sys.executable, "-c", _FSYNC, str(BUSY_SECONDS)])]


def _assert_every_host_answers_ssh(sandbox) -> None:
    for host in sandbox.hosts:
        proc = subprocess.run(
            ["ssh", "-i", host.identity_file, "-o", f"UserKnownHostsFile={host.known_hosts_file}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
             "-p", str(host.port), f"{host.user}@{host.address}", "docker", "ps"],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{host.name}: {proc.stderr}"


def _crash(state_dir: str) -> None:
    """SIGKILL every daemon of the sandbox at once, as a power cut would leave them."""
    for pid in procs.find_ours(path_marks=[state_dir + "/"], cgroup_marks=[procs.CGROUP_MARK]):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.takes_fleet_down
@pytest.mark.fleet
@pytest.mark.slow
def test_up_works_the_first_time_after_down_or_a_crash_while_both_cores_are_busy(fleet, capfd) -> None:
    from reconciler.sandbox import fleet as sandbox_fleet

    load = _keep_both_cores_busy()
    try:
        for cycle, how in enumerate(["down", "crash", "down", "crash", "down"]):
            if how == "down":
                sandbox_fleet.down()
                assert not sandbox_fleet.leftovers(), cycle
            else:
                _crash(fleet.state_dir)
            # The user's first `sandbox up`: no exception is the point.
            again = sandbox_fleet.up(3)
            assert again.hosts == fleet.hosts and dict(again.images) == dict(fleet.images), cycle
            assert sandbox_fleet.status().all_up, (cycle, sandbox_fleet.status())
            _assert_every_host_answers_ssh(again)
            print(f"cycle {cycle} ({how}): up in {again.elapsed_seconds:.1f}s under load")
        retries = capfd.readouterr().err.count("starting it once more")
        print(f"parts that needed their one retry: {retries}")
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
        sandbox_fleet.up(3)  # leave it up for the rest of the session
