"""reconciler demo: the product's story on the local sandbox, nothing typed by hand.

The sandbox comes up; the example environment repository is copied into a
bare repository with the hooks installed; the agent (``reconciler run``, its
own process) follows it; then three releases of an app that keeps its data in
the sandbox's PostgreSQL are pushed with ``git push`` from a work clone, one
after another (``reconciler.cli.demo_story``).  The agent is left running for
the next push by hand; ``--stop`` stops it, and a second ``reconciler demo``
stops it first and starts again from a fresh copy.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, default=3, help="sandbox hosts (default 3)")
    parser.add_argument("--stop", action="store_true", help="stop the agent a previous demo left running, and exit")


def run(args: argparse.Namespace) -> int:
    from reconciler.cli import demo
    from reconciler.sandbox.layout import layout

    # Progress as it happens, also when the output is a pipe (CI, `make demo | tee`).
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    if args.stop:
        # Where a demo keeps its agent does not need the sandbox to be up.
        stopped = demo.stop_agent(demo.Paths(layout().root / "demo"))
        print(f"demo agent (pid {stopped.pid}) stopped" if stopped else "no demo agent is running")
        return 0
    from reconciler.cli.demo_story import Story
    from reconciler.sandbox import fleet as sandbox_fleet

    started = time.monotonic()
    sandbox = sandbox_fleet.up(args.hosts)
    print(f"sandbox: {len(sandbox.hosts)} hosts up in {sandbox.elapsed_seconds:.1f}s, registry {sandbox.registry}, "
          f"state {sandbox.state_dir}")
    return Story(sandbox, demo.paths_for(sandbox), started).tell()
