"""The hooks ``install-hooks`` writes into a repository, and whether the
hooks a repository has are this installation's.

A repository keeps the hooks it was given until ``install-hooks`` runs
again, so one set up by an older release may lack a guard this release's
hook has (say the refusal of a rewrite of ``refs/notes/reconciler``) with
nothing telling anyone.  So each installed hook carries a marker line
naming the digest of the template it was rendered from; a template that
changed has another digest.  The agent says at start (``hooks-outdated``)
and ``status`` says every time which hook is missing, older, or someone
else's.  The agent's own gate (signatures, validation) holds either way:
the hook is where a pusher is told, before anything lands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HOOKS = ("pre-receive", "post-receive")
MARKER = "# reconciler-hook-template:"


def templates() -> Path:
    """The hooks of this installation (package data: reconciler.resources)."""
    from reconciler import resources

    return resources.path("hooks")


def template_digest(name: str) -> str:
    return "sha256:" + hashlib.sha256((templates() / name).read_bytes()).hexdigest()[:16]


def with_marker(name: str, rendered: str) -> str:
    """``rendered`` with the marker line after its first (``#!``) line."""
    first, _, rest = rendered.partition("\n")
    return f"{first}\n{MARKER} {name} {template_digest(name)}\n{rest}"


@dataclass(frozen=True)
class HookState:
    name: str
    path: Path
    state: Literal["current", "outdated", "missing", "foreign"]

    def problem(self) -> str | None:
        """What a person should know, or None for a current hook."""
        if self.state == "current":
            return None
        what = {
            "outdated": "is from another release of reconciler",
            "missing": "is missing: pushes are not checked before they land",
            "foreign": "is not reconciler's",
        }[self.state]
        return f"{self.path} {what}; run `reconciler install-hooks` on the repository"


def installed(git_dir: str | Path) -> tuple[HookState, ...]:
    """Each of reconciler's hooks in ``git_dir/hooks``, and how it stands."""
    out = []
    for name in HOOKS:
        path = Path(git_dir) / "hooks" / name
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            out.append(HookState(name, path, "missing"))
            continue
        if "reconciler" not in text:
            state = "foreign"
        elif f"{MARKER} {name} {template_digest(name)}\n" in text:
            state = "current"
        else:
            state = "outdated"  # ours, without this release's marker (older, or newer)
        out.append(HookState(name, path, state))
    return tuple(out)
