"""What the fleet tests share to drive the product as a user does: `git` as
a pusher runs it, and a bounded wait for the world to reach a state."""

from __future__ import annotations

import os
import subprocess
import time


def git(cwd, *args, check: bool = True, author: tuple[str, str] = ("Pusher", "p@x")) -> subprocess.CompletedProcess:
    """The real git client, as a pusher; a failure shows git's own words."""
    name, email = author
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
           "GIT_COMMITTER_EMAIL": email}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def wait_for(predicate, timeout: float = 120.0, every: float = 0.5):
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass (two
    busy cores: deadlines are generous); returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()
