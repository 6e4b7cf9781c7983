"""Figure: what a one-shot command pays to reach the engines (issue 13, "fast to call").

1. First engine request on a new SSH connection, one host at a time: a
   channel straight to the engine's socket (``direct-streamlocal``, the host
   entry's ``docker_socket``) against ``docker system dial-stdio`` on the
   host (what every connection ran before), interleaved.  The connect is
   not timed; the ping (``GET /version``) on the fresh connection is.
2. A one-shot ``reconciler plan`` of 3 hosts (the installed entry point
   beside this interpreter, its own process, from start to exit; the host
   entries carry ``docker_socket``) against a hand-typed parallel loop of
   OpenSSH ``ssh host docker ps -a`` on the same hosts with the same pinned
   keys and the same user (the sandbox's: the deploy user, whose /bin/sh
   reads no rc files; root's bash read them, ~150 ms a command), interleaved.
   Twice: with ``--no-agent`` (the one-shot observation: SSH from the CLI
   process), and through the running agent (``reconciler run`` on the same
   repository, its own process; ``plan`` asks it on its API socket and it
   observes on the connections it keeps), all three interleaved.

Run alone: ``.venv/bin/python bench/oneshot.py [--reps N]``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row, cleanup, env_repo, log, median, ms, ratio_row, table  # noqa: E402

ENV = "bench-oneshot"

def services_yaml(image: str) -> str:
    return textwrap.dedent(f"""\
        web:
          image: {image}
          hosts: all
          health: {{type: running}}
          stop_timeout: 2s
        """)


def commit_with_sockets(repo, sb, services: str) -> None:
    """The environment with docker_socket in each host entry (tests.envrepo writes none)."""
    import pygit2

    from tests.envrepo import _SIG

    hosts = "\n".join(f"  {h.name}: {{address: {h.address}, port: {h.port}, user: {h.user}, "
                      f"docker_socket: {h.docker_socket}}}" for h in sb.hosts)
    (repo.path / "environments" / repo.env / "environment.yaml").write_text(
        f"hosts:\n{hosts}\nservices:\n" + textwrap.indent(services.strip(), "  ") + "\n")
    git = pygit2.Repository(str(repo.path))
    git.index.add_all()
    git.index.write()
    parents = [] if git.head_is_unborn else [git.head.target]
    git.create_commit("HEAD", _SIG, _SIG, "one service on every host", git.index.write_tree(), parents)


def first_request(sb, reps: int) -> dict[str, list[float]]:
    """Per variant, the connect and the first request's times (interleaved).
    "before" is the code before the streamlocal change: dial-stdio, Nagle on."""
    import logging
    import socket

    from reconciler.adapters import ssh
    from reconciler.adapters.hosts import DockerHost

    # The dial-stdio variants are the fallback on purpose: their one line per connection is expected here.
    logging.getLogger(ssh.LOG_CHANNEL).setLevel(logging.ERROR)
    tuned = ssh._no_small_packet_delays
    out: dict[str, list[float]] = {k: [] for k in ("connect", "connect-before", "streamlocal", "dial-stdio", "before")}
    for i in range(reps):
        h = sb.hosts[i % len(sb.hosts)]
        for variant, socket_path in (("streamlocal", h.docker_socket), ("dial-stdio", None), ("before", None)):
            if variant == "before":
                ssh._no_small_packet_delays = lambda sock: None  # Nagle on, as paramiko's own socket was
            try:
                t0 = time.perf_counter()
                conn = ssh.connect(h.ssh_access())
                out["connect-before" if variant == "before" else "connect"].append(time.perf_counter() - t0)
            finally:
                ssh._no_small_packet_delays = tuned
            if variant == "before":
                conn.transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            d = DockerHost(h.name, conn, docker_socket=socket_path)
            try:
                t0 = time.perf_counter()
                d.ping()
                out[variant].append(time.perf_counter() - t0)
                expected = "streamlocal" if socket_path else "dial-stdio"
                if d.engine_channels.via() != expected:
                    raise RuntimeError(f"{h.name}: engine channels went {d.engine_channels.via()}, not {expected}")
            finally:
                d.close()
    return out


def timed(argv: list[str], ok=(0,)) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise RuntimeError(f"{argv[:3]}... exited {proc.returncode}: {proc.stderr[-500:]}")
    return elapsed


def ssh_loop(sb) -> list[str]:
    """``for h in ...; do ssh h docker ps -a & done; wait``, as a person types it."""
    one = (f"ssh -F /dev/null -i {sb.identity_file} -o UserKnownHostsFile={sb.known_hosts_file} "
           "-o StrictHostKeyChecking=yes -o BatchMode=yes")
    loop = " ".join(f"{h.user}@{h.address}" for h in sb.hosts)
    return ["sh", "-c", f"for h in {loop}; do {one} $h docker ps -a >/dev/null & done; wait"]


def start_agent(sb, repo, state: Path) -> subprocess.Popen:
    """``reconciler run`` on the repository, until its API answers a plan."""
    from bench.cli_startup import entry_point

    proc = subprocess.Popen([entry_point(), "run", "--repo", str(repo.path), "--env", ENV, "--identity", sb.identity_file,
                             "--state", str(state), "--log-format", "json"],
                            stdout=(state.parent / "agent.log").open("a"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (state / "api.sock").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"the agent's API did not come up: {(state.parent / 'agent.log').read_text()[-800:]}")
        time.sleep(0.1)
    return proc


def one_shot(sb, repo, reps: int, state: Path) -> tuple[list[float], list[float], list[float]]:
    from bench.cli_startup import entry_point

    plan_argv = [entry_point(), "plan", "--repo", str(repo.path), "--env", ENV, "--identity", sb.identity_file,
                 "--state", str(state)]
    direct_argv = plan_argv + ["--no-agent"]
    loop_argv = ssh_loop(sb)
    for argv in (plan_argv, direct_argv, loop_argv):  # warm-up: page cache, .pyc files, sshd's first sessions
        timed(argv)
    said = subprocess.run(plan_argv, capture_output=True, text=True, timeout=120).stderr
    if "observed through the agent" not in said:
        raise RuntimeError(f"plan did not go through the agent: {said[-500:]}")
    agent, direct, base = [], [], []
    for _ in range(reps):
        agent.append(timed(plan_argv))
        direct.append(timed(direct_argv))
        base.append(timed(loop_argv))
    return agent, direct, base


def run(reps: int = 10) -> list[Row]:
    from bench.common import sandbox
    from reconciler.engine.deploy import deploy_target

    sb = sandbox()
    repo = env_repo(sb, ENV)
    state = repo.path.parent / "state"
    state.mkdir()
    agent = None
    try:
        commit_with_sockets(repo, sb, services_yaml(sb.images["v1"]))
        result = deploy_target(repo.target(), report_progress=lambda *a, **k: None)
        if result.outcome is None or result.outcome.result != "deployed":
            raise RuntimeError(f"setup deploy failed: {result.outcome and result.outcome.failure}")
        first = first_request(sb, reps * 2)
        agent = start_agent(sb, repo, state)
        through, ours, base = one_shot(sb, repo, reps, state)
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(60)
        cleanup(sb, f"{ENV}-")
    b = median(base)
    sl, ds, before = first["streamlocal"], first["dial-stdio"], first["before"]

    def spread(values) -> str:
        return f"{ms(min(values))}-{ms(max(values))}"

    return [
        ratio_row("first engine request, new connection: streamlocal / before (dial-stdio, Nagle on)",
                  median(sl), median(before), 1.0, target="< 1x (report)",
                  note=f"median of {len(sl)}, hosts in turn, connect not timed; streamlocal {spread(sl)}, "
                       f"before {spread(before)}"),
        ratio_row("first engine request, new connection: streamlocal / dial-stdio (both TCP_NODELAY)",
                  median(sl), median(ds), 1.0, target="< 1x (report)",
                  note=f"what the channel alone saves; dial-stdio {spread(ds)}"),
        ratio_row("SSH connect, one host: now / before (Nagle on in the handshake)",
                  median(first["connect"]), median(first["connect-before"]), 1.0, target="< 1x (report)",
                  note=f"now {spread(first['connect'])}, before {spread(first['connect-before'])}"),
        ratio_row(f"one-shot plan 3 hosts through the agent / ssh loop, as {sb.hosts[0].user}", median(through), b, 1.0,
                  note=f"median of {reps}, whole processes, interleaved with the two others; the agent "
                       "(`reconciler run`, its own process) observes on the connections it keeps; "
                       f"ours {ms(min(through))}-{ms(max(through))}"),
        ratio_row(f"one-shot plan 3 hosts --no-agent / ssh loop, as {sb.hosts[0].user}", median(ours), b, 1.0,
                  note=f"median of {reps}, whole processes, interleaved; the installed entry point; baseline: "
                       "parallel `ssh host docker ps -a` (OpenSSH, same pinned keys, same user); "
                       f"ours {ms(min(ours))}-{ms(max(ours))}, ssh loop {ms(min(base))}-{ms(max(base))}"),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10)
    rows = run(parser.parse_args().reps)
    log("oneshot: done")
    print(table(rows))
