"""`reconciler demo` (what `make demo` runs): the example environment, pinned
to the sandbox by a commit, deployed to the fleet; a second run is in sync."""

from __future__ import annotations

import pygit2
import pytest

from reconciler.cli.main import main
from tests.envrepo import serving

pytestmark = pytest.mark.fleet


def test_demo_deploys_the_example_environment_and_says_what_runs_where(fleet, capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert serving(fleet, 8080) == {h.name: "demo-web v1" for h in fleet.hosts}
    assert "what each host serves:" in out and "http://10.213.0.11:8080/" in out
    repo = pygit2.Repository(f"{fleet.state_dir}/demo/environments")
    head = repo[repo.head.target]
    assert "pin the sandbox's host keys and image digests" in head.message
    # The deploy is explained by that commit: the containers carry its id.
    assert f"rev {str(head.id)[:12]}" in out
    assert main(["demo"]) == 0
    assert "apply: nothing to change" in capsys.readouterr().out
