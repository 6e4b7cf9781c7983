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

Not measured yet: the one-service change with Ansible.
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
    return [Row("vs Ansible no-op check 3x20 (ours / ansible)", ms(o), ms(t), o / t, target_text, "n/a",
                f"median of {reps}; ansible-playbook --check, 20 community.docker.docker_container tasks, "
                f"pipelining, 3 forks; ours = open+observe+plan; the one-service change with Ansible is not "
                f"measured yet", {"ours": o, "baseline": t})]
