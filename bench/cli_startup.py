"""Figure: how fast the CLI answers, against the interpreter starting at all.

Ours: ``reconciler --help`` (the installed entry point beside this
interpreter, so the console script's own start-up is included) and
``reconciler validate --repo desired-state`` (what the pre-receive hook runs
for every push).  Baseline: ``python -c pass`` with the same interpreter.
Interleaved, wall time of each child process, median of the repetitions.
No fleet needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: python bench/cli_startup.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, Row, log, median, ms, ratio_row

HELP_TARGET = 0.150  # seconds, issue 13


def _wall(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return elapsed


def entry_point() -> str:
    exe = Path(sys.executable).parent / "reconciler"
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing: install the project (make setup) so the entry point exists")
    return str(exe)


def run(reps: int = 20) -> list[Row]:
    exe = entry_point()
    # A user's shell: no settings file, nothing that points elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")} | {"RECONCILER_CONFIG": ""}
    commands = {
        "help": [exe, "--help"],
        "validate": [exe, "validate", "--repo", str(REPO / "desired-state")],
        "python": [sys.executable, "-c", "pass"],
    }
    for argv in commands.values():  # warm the page cache and the .pyc files
        _wall(argv, env)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(reps):
        for name, argv in commands.items():
            samples[name].append(_wall(argv, env))
    base = median(samples["python"])
    helped, validated = median(samples["help"]), median(samples["validate"])
    log(f"startup: --help {ms(helped)}, validate {ms(validated)}, python -c pass {ms(base)}")
    validate = ratio_row("reconciler validate, example repo (vs python -c pass)", validated, base, float("inf"),
                         target="report the ratio")
    validate.met = "n/a"  # no target: reported for the pre-receive hook's cost per push
    return [
        ratio_row("reconciler --help (vs python -c pass)", helped, base, float("inf"), extra_ok=helped < HELP_TARGET,
                  target=f"< {HELP_TARGET * 1000:.0f} ms", note=f"median of {reps}, interleaved; wall of each process"),
        validate,
    ]



if __name__ == "__main__":
    # `python bench/cli_startup.py [REPS]`: this figure alone, as bench/run.py prints it.
    from bench.common import table

    print(table(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20)))
