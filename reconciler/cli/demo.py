"""The demo: the example environment repository deployed to the local fleet.

The example in ``desired-state/`` names the sandbox hosts but cannot know
their freshly generated host keys, and its image digests depend on the
busybox the sandbox built the demo images from.  So the demo keeps its own
environment repository (a real git repository under the sandbox state dir),
copies the example into it, pins the sandbox's keys and digests, and commits
that: the deploy that follows is explained by a commit, like any other.
"""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
from pathlib import Path

import pygit2

from reconciler import resources
from reconciler.sandbox.description import Sandbox

DEMO_ENVIRONMENT = "production"
_IMAGE_RE = re.compile(r"(?P<repo>[\w.:/-]+/demo/web):(?P<tag>[\w.-]+)@sha256:[0-9a-f]{64}")
_SIGNATURE = pygit2.Signature("reconciler demo", "demo@reconciler.invalid")


def pin_sandbox(text: str, sandbox: Sandbox) -> str:
    """The example YAML with each demo image pinned to the sandbox's digest."""

    def repin(match: re.Match) -> str:
        return sandbox.images.get(match.group("tag"), match.group(0))

    return _IMAGE_RE.sub(repin, text)


def prepare_repository(sandbox: Sandbox, destination: Path, example: Path | None = None) -> str:
    """Make ``destination`` a git repository holding the example (default:
    this installation's desired-state/), pinned to the sandbox; commit when
    that changes anything.  Returns HEAD."""
    example = resources.path("desired-state") if example is None else example
    if not (destination / ".git").exists():
        destination.mkdir(parents=True, exist_ok=True)
        pygit2.init_repository(str(destination), initial_head="main")
    repo = pygit2.Repository(str(destination))
    for item in destination.iterdir():
        if item.name != ".git":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.copytree(example, destination, dirs_exist_ok=True)
    keys = Path(sandbox.known_hosts_file).read_text()
    for env_dir in sorted((destination / "environments").iterdir()):
        (env_dir / "known_hosts").write_text("# Pinned by `reconciler demo` from the local sandbox.\n" + keys)
        for yaml_file in sorted(env_dir.rglob("*.yaml")):
            yaml_file.write_text(pin_sandbox(yaml_file.read_text(), sandbox))
    repo.index.add_all()
    repo.index.write()
    tree = repo.index.write_tree()
    parents = [] if repo.head_is_unborn else [repo.head.target]
    if parents and repo[parents[0]].tree_id == tree:
        return str(parents[0])
    message = "demo: pin the sandbox's host keys and image digests\n\nCopied from desired-state/ by `reconciler demo`.\n"
    return str(repo.create_commit("HEAD", _SIGNATURE, _SIGNATURE, message, tree, parents))


def provision_secret_files(hosts, environment) -> list[str]:
    """Create the host-side secret files the environment references, if absent.

    On real hosts this is the operator's job (the repository only names the
    file); the sandbox's hosts are new, so the demo plays the operator.
    """
    made = []
    for service in environment.services:
        for secret in service.secrets:
            if not secret.file:
                continue
            for host_name in service.hosts:
                sftp = hosts[host_name].conn.sftp()
                try:
                    sftp.stat(secret.file)
                    continue
                except FileNotFoundError:
                    pass
                hosts[host_name].conn.run(f"mkdir -p -m 700 {shlex.quote(str(Path(secret.file).parent))}")
                with sftp.open(secret.file, "w") as fh:
                    fh.write(secrets.token_urlsafe(32))
                sftp.chmod(secret.file, 0o600)
                made.append(f"{host_name}:{secret.file}")
    return made
