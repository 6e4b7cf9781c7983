"""reconciler demo: bring up the local fleet and deploy the example environment to it."""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

from reconciler.cli.commands._common import finish, load_target
from reconciler.cli.commands.apply import print_result, progress_printer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default=None, help="which example environment to deploy (default: production)")
    parser.add_argument("--hosts", type=int, default=3, help="sandbox hosts (default 3)")


def answer_of(address: str, port: int, path: str = "/") -> str:
    """What a host serves, asked from this machine (sandbox addresses only)."""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=3) as response:
            return response.read().decode().strip()
    except OSError as exc:
        return f"(no answer: {exc})"


def run(args: argparse.Namespace) -> int:
    from reconciler.cli import demo
    from reconciler.core import report
    from reconciler.cli.commands import _engine
    from reconciler.engine.recording import cli_actor
    from reconciler.engine.run import Request, run as run_engine
    from reconciler.sandbox import fleet as sandbox_fleet

    sandbox = sandbox_fleet.up(args.hosts)
    print(f"sandbox: {len(sandbox.hosts)} hosts up in {sandbox.elapsed_seconds:.1f}s, registry {sandbox.registry}, state {sandbox.state_dir}")
    repo = Path(sandbox.state_dir) / "demo" / "environments"
    head = demo.prepare_repository(sandbox, repo)
    print(f"environment repository: {repo} @ {head[:12]}")
    target_args = argparse.Namespace(repo=str(repo), env=args.env or demo.DEMO_ENVIRONMENT, rev="HEAD",
                                     identity=sandbox.identity_file, worktree=False, timeout=10.0, yes=True)
    target = load_target(target_args)
    env = target.environment
    with target.connect() as hosts:
        for made in demo.provision_secret_files(hosts, env):
            print(f"provisioned secret file {made} (an operator's job on real hosts)")
    ctx = _engine.context(target_args, target, observers=(progress_printer(),),
                          confirm=lambda plan: print(report.plan_text(plan)) or True)
    result = run_engine(ctx, Request(env.name, "deploy", commit=target.revision, trigger="demo", actor=cli_actor(), force=True))
    code = finish(result, "deploy")
    print_result(target, result)
    print("what each host serves:")
    for service in env.services:
        for port in service.ports:
            for host_name in service.hosts:
                host = env.host(host_name)
                print(f"  http://{host.address}:{port.host_port}/  {host_name}/{service.name}: {answer_of(host.address, port.host_port)}")
    print(f"next: edit {repo}/environments/{env.name}/environment.yaml, commit, then\n"
          f"  {Path(sys.executable).parent / 'reconciler'} apply --repo {repo} --env {env.name} "
          f"--identity {sandbox.identity_file} --yes")
    return code

