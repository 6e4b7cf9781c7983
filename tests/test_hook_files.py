"""Whether a repository's hooks are this installation's: install-hooks marks
each with its template's digest, and the agent and ``status`` say which hook
is missing, from another release, or someone else's."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.adapters import hook_files
from reconciler.cli.commands import _agent, status
from reconciler.cli.main import main


def bare_repo(tmp_path: Path) -> Path:
    bare = tmp_path / "env.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    for sample in (bare / "hooks").glob("*.sample"):
        sample.unlink()
    return bare


def states(bare: Path) -> dict[str, str]:
    return {h.name: h.state for h in hook_files.installed(bare)}


def test_hooks_install_hooks_wrote_are_current_and_an_older_release_s_are_outdated(tmp_path):
    bare = bare_repo(tmp_path)
    assert states(bare) == {"pre-receive": "missing", "post-receive": "missing"}
    assert main(["install-hooks", str(bare)]) == 0
    assert states(bare) == {"pre-receive": "current", "post-receive": "current"}
    hook = bare / "hooks" / "pre-receive"
    first, marker, rest = hook.read_text().split("\n", 2)
    assert first == "#!/bin/sh" and marker.startswith(f"{hook_files.MARKER} pre-receive sha256:")
    hook.write_text(f"{first}\n{rest}")  # what an older release installed: no marker
    assert states(bare)["pre-receive"] == "outdated"
    hook.write_text(f"{first}\n{hook_files.MARKER} pre-receive sha256:0000000000000000\n{rest}")  # another template
    assert states(bare)["pre-receive"] == "outdated"
    hook.write_text("#!/bin/sh\nexec /usr/local/bin/our-own-checks\n")
    assert states(bare)["pre-receive"] == "foreign"


def test_status_says_which_hook_needs_install_hooks_and_a_current_set_says_current(tmp_path):
    bare = bare_repo(tmp_path)
    gdir = _agent.git_dir(str(bare))
    location = _agent.StateLocation(tmp_path / "state", "--state")
    view = status.agent_view(gdir, location, "prod")
    text = status.agent_view_text(view)
    assert f"hooks:          {bare / 'hooks' / 'pre-receive'} is missing: pushes are not checked before they land; " \
           "run `reconciler install-hooks` on the repository" in text
    assert len(status.agent_view_json(view)["hooks"]) == 2
    assert main(["install-hooks", str(bare)]) == 0
    view = status.agent_view(gdir, location, "prod")
    assert "hooks:          current" in status.agent_view_text(view) and status.agent_view_json(view)["hooks"] == []
