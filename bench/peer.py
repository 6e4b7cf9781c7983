"""Figure: against a peer, Ansible (``community.docker.docker_container`` over SSH).

The no-op check: the same 3 hosts x 20 services as ``noop.py`` (deployed by
us), checked by ``ansible-playbook --check`` with one ``docker_container``
task per service (name, image by digest, state started), OpenSSH with the
sandbox's pinned known_hosts, pipelining on, 3 forks.  Ratio = ours (open +
observe + plan, the full path) / Ansible's playbook wall time: below 1 means
we are faster.

Ansible (the ``ansible`` package from PyPI, which carries community.docker,
plus ``requests``, which the module needs on the managed host) is installed
once into its own venv, ``/var/tmp/reconciler-bench-ansible``; the sandbox
hosts share this machine's filesystem, so that venv's python is also the
managed hosts' interpreter.

The one-service change: image v1 <-> v2 of one service with a published
port on the 3 hosts (recreate).  Ours: ``deploy.deploy_target`` (as in
``deploy.py``: open, plan, pre-flight, stop-first, health verdict on every
host).  Ansible: one ``docker_container`` task (image by digest,
published port, ``state: started``), which recreates the container when
the image differs and does not wait for health, so Ansible does less.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, cleanup, env_repo, log, measured, median, ms

VENV = Path(os.environ.get("BENCH_ANSIBLE_VENV", "/var/tmp/reconciler-bench-ansible"))


def ensure_ansible() -> Path:
    playbook = VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        log("peer: installing ansible into " + str(VENV) + " (once)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "ansible", "requests"], check=True,
                       capture_output=True)
    return playbook


def _files(sb, work: Path, image_ref: str, services: int) -> tuple[Path, Path]:
    lines = ["[fleet]"] + [f"{h.name} ansible_host={h.address} ansible_port={h.port}" for h in sb.hosts]
    lines += ["[fleet:vars]", f"ansible_user={sb.hosts[0].user}",
              f"ansible_ssh_private_key_file={sb.identity_file}",
              f"ansible_ssh_common_args='-o UserKnownHostsFile={sb.known_hosts_file} "
              f"-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'",
              f"ansible_python_interpreter={VENV / 'bin' / 'python'}"]
    inventory = work / "inventory.ini"
    inventory.write_text("\n".join(lines) + "\n")
    tasks = "".join(f'    - community.docker.docker_container: {{name: bench-noop-s{i:02d}, image: "{image_ref}", '
                    f'state: started}}\n' for i in range(1, services + 1))
    playbook = work / "noop.yml"
    playbook.write_text("- hosts: fleet\n  gather_facts: false\n  tasks:\n" + tasks)
    return inventory, playbook


def run(reps: int = 2) -> list[Row]:
    from bench import noop
    from bench.common import sandbox

    target_text = "report the ratio"
    try:
        playbook_bin = ensure_ansible()
    except (OSError, subprocess.CalledProcessError) as exc:
        return [Row.na("vs Ansible no-op check 3x20", target_text, f"ansible could not be installed: {exc}")]
    sb = sandbox()
    repo = env_repo(sb, noop.ENV)
    work = Path(tempfile.mkdtemp(prefix="bench-ansible-"))
    env = {**os.environ, "ANSIBLE_PIPELINING": "1", "ANSIBLE_FORKS": "3", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(work / "tmp"), "ANSIBLE_CONTROL_PATH_DIR": str(work / "cp")}
    ours, theirs = [], []
    try:
        noop.deploy_services(sb, repo)
        target = repo.target()
        name, _, digest = sb.images["v1"].rpartition("@")
        inventory, playbook = _files(sb, work, f"{name.rsplit(':', 1)[0]}@{digest}", noop.SERVICES)
        noop.ours_once(target)
        for _ in range(reps):
            with measured(ours):
                noop.ours_once(target)
            t0 = time.perf_counter()
            out = subprocess.run([str(playbook_bin), "-i", str(inventory), str(playbook), "--check"],
                                 env=env, capture_output=True, text=True)
            theirs.append(time.perf_counter() - t0)
            if out.returncode != 0 or "changed=0" not in out.stdout:
                tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
                return [Row.na("vs Ansible no-op check 3x20", target_text, "ansible-playbook failed: " + " / ".join(tail))]
    finally:
        cleanup(sb, f"{noop.ENV}-")
        subprocess.run(["rm", "-rf", str(work)], check=False)
    o, t = median(s.wall for s in ours), median(theirs)
    rows = [Row("vs Ansible no-op check 3x20 (ours / ansible)", ms(o), ms(t), o / t, target_text, "n/a",
                f"median of {reps}; ansible-playbook --check, 20 community.docker.docker_container tasks, "
                f"pipelining, 3 forks; ours = open+observe+plan", {"ours": o, "baseline": t})]
    return rows + [_change(sb, playbook_bin, env, reps)]


CHANGE_ENV = "bench-peer"
CHANGE_NAME = "bench-peer-ansible-web"
PORT_OURS, PORT_ANSIBLE = 18332, 18333


def _change(sb, playbook_bin: Path, env: dict, reps: int) -> Row:
    """The same one-service change (v1 <-> v2, 3 hosts, published port) both ways."""
    from bench import deploy

    figure = "vs Ansible one-service change 3 hosts (ours / ansible)"
    repo = env_repo(sb, CHANGE_ENV)
    work = Path(tempfile.mkdtemp(prefix="bench-ansible-change-"))
    inventory, _ = _files(sb, work, "unused", 0)

    def play(image_ref: str) -> float:
        name, _, digest = image_ref.rpartition("@")
        pinned = f"{name.rsplit(':', 1)[0]}@{digest}"
        book = work / "change.yml"
        book.write_text("- hosts: fleet\n  gather_facts: false\n  tasks:\n"
                        f'    - community.docker.docker_container: {{name: {CHANGE_NAME}, image: "{pinned}", '
                        f'published_ports: ["{PORT_ANSIBLE}:8080"], state: started, stop_timeout: 2}}\n')
        t0 = time.perf_counter()
        out = subprocess.run([str(playbook_bin), "-i", str(inventory), str(book)], env=env, capture_output=True, text=True)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError("ansible-playbook failed: " + " / ".join((out.stdout + out.stderr).strip().splitlines()[-3:]))
        return took

    def ours_once(image_ref: str) -> float:
        from reconciler.engine.deploy import deploy_target

        repo.commit(deploy.service_yaml(image_ref, PORT_OURS), message="peer change")
        t0 = time.perf_counter()
        result = deploy_target(repo.target(), report_progress=lambda *a, **k: None)
        took = time.perf_counter() - t0
        if result.outcome is None or result.outcome.result != "deployed":
            raise RuntimeError(f"our deploy did not deploy: {result.outcome and result.outcome.failure}")
        return took

    ours, theirs = [], []
    try:
        images = [sb.images["v1"], sb.images["v2"]]
        ours_once(images[0])  # both start from v1, untimed
        play(images[0])
        for i in range(reps * 2):
            image = images[(i + 1) % 2]
            ours.append(ours_once(image))
            theirs.append(play(image))
    except RuntimeError as exc:
        return Row.na(figure, "report the ratio", str(exc))
    finally:
        cleanup(sb, f"{CHANGE_ENV}-")
        cleanup(sb, CHANGE_NAME)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    o, t = median(ours), median(theirs)
    return Row(figure, ms(o), ms(t), o / t, "report the ratio", "n/a",
               f"median of {len(ours)} (v1<->v2); ansible: one docker_container task, recreate on image change, "
               f"no health wait; ours: deploy_target, stop-first, health verdict on every host",
               {"ours": o, "baseline": t})
