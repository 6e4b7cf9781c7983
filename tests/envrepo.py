"""Environment repositories for fleet tests: real git repositories (pygit2)
whose hosts and pinned keys are the sandbox's, so every deploy in a test is a
commit, as it is for users."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pygit2

from reconciler.engine.target import Target, load_target

_SIG = pygit2.Signature("test author", "author@reconciler.invalid")


@dataclass
class EnvRepo:
    path: Path
    env: str
    sandbox: object  # reconciler.sandbox.description.Sandbox

    @property
    def identity(self) -> str:
        return self.sandbox.identity_file

    def commit(self, services_yaml: str, *, policy: str = "", message: str = "change") -> str:
        """Write environment.yaml with these services (and policy lines), commit, return the id."""
        env_dir = self.path / "environments" / self.env
        hosts = "\n".join(
            f"  {h.name}: {{address: {h.address}, port: {h.port}, user: {h.user}"
            + (f", docker_socket: {h.docker_socket}" if getattr(h, "docker_socket", None) else "") + "}" for h in self.sandbox.hosts
        )
        policy_block = "policy:\n" + textwrap.indent(textwrap.dedent(policy).strip(), "  ") + "\n" if policy.strip() else ""
        (env_dir / "environment.yaml").write_text(
            f"hosts:\n{hosts}\n{policy_block}{self.blocks()}services:\n"
            + textwrap.indent(textwrap.dedent(services_yaml).strip(), "  ") + "\n"
        )
        repo = pygit2.Repository(str(self.path))
        repo.index.add_all()
        repo.index.write()
        tree = repo.index.write_tree()
        parents = [] if repo.head_is_unborn else [repo.head.target]
        return str(repo.create_commit("HEAD", _SIG, _SIG, message, tree, parents))

    def blocks(self) -> str:
        """Top-level blocks of environment.yaml between the policy and the services."""
        return ""

    def target(self, rev: str = "HEAD") -> Target:
        return load_target(argparse.Namespace(repo=str(self.path), env=self.env, rev=rev, identity=self.identity, worktree=False))


def deploy(repo: EnvRepo, rev: str = "HEAD"):
    """Deploy ``rev`` through the engine, as ``reconciler apply --yes`` does (quietly)."""
    from reconciler.engine.deploy import deploy_target

    return deploy_target(repo.target(rev), report_progress=lambda *a, **k: None)


def make_env_repo(root: Path, sandbox, env: str) -> EnvRepo:
    env_dir = root / "environments" / env
    env_dir.mkdir(parents=True)
    (env_dir / "known_hosts").write_text(Path(sandbox.known_hosts_file).read_text())
    pygit2.init_repository(str(root), initial_head="main")
    return EnvRepo(root, env, sandbox)


def serving(sandbox, port: int) -> dict[str, str]:
    """What each sandbox host answers on ``port`` (sandbox addresses only)."""
    import urllib.request

    answers = {}
    for host in sandbox.hosts:
        try:
            with urllib.request.urlopen(f"http://{host.address}:{port}/", timeout=3) as response:
                answers[host.name] = response.read().decode().strip()
        except OSError as exc:
            answers[host.name] = f"no answer ({type(exc).__name__})"
    return answers


def containers(sandbox, prefix: str) -> dict[str, list[tuple[str, str, str]]]:
    """Per host, (name, id, status) of containers whose name starts with
    ``prefix``, read through the engine's local socket: an observer
    independent of the product's SSH path.  One list request per host (no
    inspect of each: another test's container removed between the list and
    its inspect would fail this one with a 404)."""
    import docker

    seen = {}
    for host in sandbox.hosts:
        client = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41")
        try:
            listed = ((s["Names"][0].lstrip("/"), s["Id"], s["State"]) for s in client.api.containers(all=True))
            seen[host.name] = sorted(c for c in listed if c[0].startswith(prefix))
        finally:
            client.close()
    return seen


def remove_containers(sandbox, prefix: str) -> None:
    import docker

    for host in sandbox.hosts:
        client = docker.DockerClient(base_url=f"unix://{host.docker_socket}", version="1.41")
        try:
            for c in client.containers.list(all=True):
                if c.name.startswith(prefix):
                    c.remove(force=True)
        finally:
            client.close()
