"""``docker_socket`` in a host entry: where the engine listens on that host
(the engine channel goes straight to it, ``adapters.dialstdio``)."""

from __future__ import annotations

import pytest

from reconciler.core.schema import load_environment
from reconciler.errors import InvalidDesiredState
from schema_helpers import DIGEST, snapshot

SERVICES = f"""\
services:
  web:
    image: registry.example:5000/demo/web:v1@{DIGEST}
    hosts: all
"""


def hosts(block: str) -> str:
    return "hosts:\n" + block + SERVICES


def test_a_host_entry_names_its_engines_socket():
    env = load_environment(snapshot(env=hosts(
        "  h1: {address: 10.0.0.1, docker_socket: /run/user/1000/docker.sock}\n"
        "  h2: {address: 10.0.0.2}\n"
        "  h3: 10.0.0.3\n")), "test")
    sockets = {h.name: h.docker_socket for h in env.hosts}
    # Unset is None, not the default path: the channel then falls back to the host's own docker CLI.
    assert sockets == {"h1": "/run/user/1000/docker.sock", "h2": None, "h3": None}


@pytest.mark.parametrize("value, says", [
    ("run/docker.sock", "hosts.h1.docker_socket: invalid value 'run/docker.sock'; an absolute path"),
    ("unix:///run/docker.sock", "invalid value 'unix:///run/docker.sock'; an absolute path"),
    ("/" + "x" * 107, "an absolute path of at most 107 characters"),
    ("22", "hosts.h1.docker_socket: expected a string"),
])
def test_a_socket_that_cannot_be_one_is_refused_at_its_line(value, says):
    with pytest.raises(InvalidDesiredState) as refused:
        load_environment(snapshot(env=hosts(f"  h1: {{address: 10.0.0.1, docker_socket: {value}}}\n")), "test")
    problem = next(p for p in refused.value.problems if "docker_socket" in p)
    assert problem.startswith("environments/test/environment.yaml:2:")
    assert says in problem
