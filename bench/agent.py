"""Figures: push to reconcile start, and the idle agent's footprint.

Setup: an environment repository with 3 environments (one tiny service each,
health ``running``, no ports), a bare "central" repository with the hooks of
``reconciler install-hooks``, and ``reconciler run`` (the agent) on it with
JSON logs on a pipe.

Push to reconcile start: 50 pushes of a commit that changes only a comment;
for each, the time from ``git push`` returning to the agent's
``reconcile-begin`` line for that commit arriving on the pipe (negative: the
agent started before the push returned, since post-receive runs inside the
push).  Pushes are spaced so a reconcile never coalesces two of them.
Baseline: the installed post-receive hook run by hand (its whole process).
Target: p50 under 50 ms.

Footprint: after the start-up reconciles, the agent's RSS (VmRSS) and CPU
(utime+stime from /proc) over 60 s idle.  Target: under 80 MB and under 1%
of a core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from bench.common import Row, cleanup, env_repo, ms, p

ENVS = ("bench-agent-a", "bench-agent-b", "bench-agent-c")
P50_TARGET = 0.050
RSS_TARGET_MB = 80
CPU_TARGET = 0.01


def service_yaml(image: str) -> str:
    return textwrap.dedent(f"""\
        web:
          image: {image}
          hosts: [h1]
          health: {{type: running}}
          stop_timeout: 2s
        """)


def _git(cwd, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@reconciler.invalid",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@reconciler.invalid"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)


class AgentLog:
    """Reads the agent's JSON lines as they come, stamped on arrival."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            now = time.perf_counter()
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"event": "text", "line": raw.rstrip()}
            with self.cond:
                self.lines.append((now, data))
                self.cond.notify_all()

    def wait_for(self, predicate, timeout: float, start: int = 0) -> tuple[float, dict] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for stamp, data in self.lines[start:]:
                    if predicate(data):
                        return stamp, data
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def count(self, event: str) -> int:
        with self.cond:
            return sum(1 for _, d in self.lines if d.get("event") == event)


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(pushes: int = 50, idle_seconds: float = 60.0, gap: float = 1.2) -> list[Row]:
    from bench.common import sandbox
    from reconciler.cli.main import main as cli

    sb = sandbox()
    work = env_repo(sb, ENVS[0])
    root = work.path.parent
    for env in ENVS[1:]:
        d = work.path / "environments" / env
        d.mkdir(parents=True)
        (d / "known_hosts").write_text(Path(sb.known_hosts_file).read_text())
    from tests.envrepo import EnvRepo

    for env in ENVS:
        EnvRepo(work.path, env, sb).commit(service_yaml(sb.images["v1"]), message=f"{env}: web v1")
    bare = root / "central.git"
    _git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # stdout is for the one table
        installed = cli(["install-hooks", str(bare)])
    if installed != 0:
        raise RuntimeError("install-hooks failed")
    _git(work.path, "remote", "add", "origin", str(bare))
    _git(work.path, "push", "-q", "origin", "main")

    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "--repo", str(bare), "--identity",
                             sb.identity_file, "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            cwd=str(root))
    agent_log = AgentLog(proc)
    rows: list[Row] = []
    try:
        if agent_log.wait_for(lambda d: d.get("event") == "agent-started", 30) is None:
            raise RuntimeError("agent did not start: " + str(agent_log.lines[-5:]))
        # Start-up: one reconcile (a deploy) per environment, then quiet.
        deadline = time.monotonic() + 120
        while agent_log.count("reconcile-begin") < len(ENVS) and time.monotonic() < deadline:
            time.sleep(0.2)
        _wait_quiet(proc.pid, deadline=time.monotonic() + 60)
        rows += footprint(proc.pid, idle_seconds)
        rows += push_latency(work, bare, agent_log, pushes, gap)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        for env in ENVS:
            cleanup(sb, f"{env}-")
        shutil.rmtree(root, ignore_errors=True)
    return rows


def _wait_quiet(pid: int, deadline: float) -> None:
    """Until the agent used under 1% CPU over a second (start-up reconciles done)."""
    while time.monotonic() < deadline:
        c0 = _proc_cpu(pid)
        time.sleep(1.0)
        if _proc_cpu(pid) - c0 < 0.01:
            return


def footprint(pid: int, seconds: float) -> list[Row]:
    c0, t0 = _proc_cpu(pid), time.monotonic()
    peak = _proc_rss_mb(pid)
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        peak = max(peak, _proc_rss_mb(pid))
    cpu = (_proc_cpu(pid) - c0) / (time.monotonic() - t0)
    threads = len(os.listdir(f"/proc/{pid}/task"))
    note = f"{len(ENVS)} environments, {seconds:.0f} s idle after start-up; {threads} threads; CPU from /proc utime+stime"
    return [
        Row("idle agent RSS (3 envs)", f"{peak:.0f} MB", "-", None, f"< {RSS_TARGET_MB} MB",
            "yes" if peak < RSS_TARGET_MB else "no", note, {"rss_mb": peak}),
        Row(f"idle agent CPU over {seconds:.0f} s", f"{cpu * 100:.2f}% core", "-", None, f"< {CPU_TARGET * 100:g}% core",
            "yes" if cpu < CPU_TARGET else "no", "", {"cpu": cpu}),
    ]


def push_latency(work, bare: Path, agent_log: AgentLog, pushes: int, gap: float) -> list[Row]:
    from bench.common import sandbox

    image = sandbox().images["v1"]
    latencies, misses, push_walls = [], 0, []
    for i in range(pushes):
        commit = work.commit(service_yaml(image) + f"# bench push {i}\n", message=f"bench push {i}")
        start = len(agent_log.lines)
        began = time.perf_counter()
        _git(work.path, "push", "-q", "origin", "main")
        returned = time.perf_counter()
        push_walls.append(returned - began)
        seen = agent_log.wait_for(lambda d: d.get("event") == "reconcile-begin"
                                  and str(d.get("commit", "")).startswith(commit[:12]), 15, start)
        if seen is None:
            misses += 1
        else:
            latencies.append(seen[0] - returned)
        time.sleep(gap)  # the no-op reconcile ends before the next push
    hook = bare / "hooks" / "post-receive"
    head = _git(bare, "rev-parse", "HEAD").stdout.strip()
    base = []
    for _ in range(pushes):
        t0 = time.perf_counter()
        subprocess.run([str(hook)], input=f"{head} {head} refs/heads/main\n", cwd=bare, capture_output=True,
                       text=True, check=True)
        base.append(time.perf_counter() - t0)
    if not latencies:
        return [Row.na("push -> reconcile start", f"p50 < {P50_TARGET * 1000:.0f} ms", "no reconcile-begin seen")]
    o50, o99, b50, b99 = p(latencies, 0.5), p(latencies, 0.99), p(base, 0.5), p(base, 0.99)
    note = (f"{len(latencies)} of {pushes} pushes ({misses} missed); from `git push` returning to the agent's "
            f"reconcile-begin line (negative: started before the push returned); baseline = the post-receive "
            f"hook run by hand; the push itself (git push incl. pre-receive validation) p50 {ms(p(push_walls, 0.5))}")
    return [
        Row("push -> reconcile start p50", ms(o50), ms(b50), o50 / b50 if b50 and o50 > 0 else None,
            f"p50 < {P50_TARGET * 1000:.0f} ms", "yes" if o50 < P50_TARGET else "no", note,
            {"samples": latencies, "baseline_samples": base}),
        Row("push -> reconcile start p99", ms(o99), ms(b99), o99 / b99 if b99 and o99 > 0 else None, "-", "n/a"),
    ]
