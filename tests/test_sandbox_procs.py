"""The sandbox's daemons start in "/", not in the caller's directory.

Reproduced on this machine: an HAProxy started by a test run from a CI
clone kept that clone as its working directory; the clone was deleted, and
every later reload (the master re-executes itself) failed with "Impossible
to retrieve startup directory name", so no deploy could configure a router.
"""

from __future__ import annotations

import os
import sys
import time

from reconciler.sandbox import procs


def test_a_daemon_starts_in_the_root_directory_whatever_the_callers_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cwd"
    pid = procs.spawn_detached([sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.getcwd())"],
                               tmp_path / "daemon.log")
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.read_text() == "/"
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
