"""Building snapshots from text for the schema tests."""

from __future__ import annotations

import textwrap

from reconciler.core.schema import Snapshot

DIGEST = "sha256:" + "ab" * 32
KNOWN_HOSTS = "# pinned keys\n"

ENV = f"""\
hosts:
  h1: {{address: 10.0.0.1, groups: [web]}}
  h2: {{address: 10.0.0.2, groups: [web]}}
  db1: {{address: 10.0.0.3, groups: [db]}}
policy:
  require_digest: true
services:
  web:
    image: registry.example:5000/demo/web:v1@{DIGEST}
    hosts: [web]
    ports:
      - "8080:8080"
    env:
      APP_ENV: test
    health:
      type: http
      path: /health
"""


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def snapshot(files: dict[str, str | bytes] | None = None, env: str | None = ENV, name: str = "test", **extra) -> Snapshot:
    """A repository with one environment ``name`` (``env`` as its environment.yaml)."""
    content: dict[str, bytes] = {}
    if env is not None:
        content[f"environments/{name}/environment.yaml"] = env.encode()
        content[f"environments/{name}/known_hosts"] = KNOWN_HOSTS.encode()
    for path, text in (files or {}).items():
        content[path] = text.encode() if isinstance(text, str) else text
    return Snapshot(files=content, **extra)


def env_with(services: str, hosts: str | None = None, policy: str = "require_digest: true", top: str = "") -> str:
    """An environment file with the given services block (indented like in a file)."""
    hosts = hosts or "  h1: {address: 10.0.0.1, groups: [web]}\n  h2: {address: 10.0.0.2, groups: [web]}\n"
    return f"hosts:\n{hosts}policy:\n  {policy}\n{top}services:\n{services}"
