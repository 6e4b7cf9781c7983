"""reconciler apply: make the hosts run what the commit says."""

from __future__ import annotations

import sys
import time

from reconciler import fleet, report
from reconciler.apply import run_plan
from reconciler.commands._common import add_target_arguments, is_tty, load_target
from reconciler.errors import StalledError
from reconciler.plan import plan_deploy

HELP = "deploy a commit of the environment repository to its hosts, health-gated, rolling back on failure"

EXIT_ROLLED_BACK = 3


def add_arguments(parser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--yes", action="store_true", help="apply without asking")


def progress_printer():
    start = time.monotonic()

    def show(event: str, **fields) -> None:
        elapsed = time.monotonic() - start
        where = "/".join(str(fields[k]) for k in ("host", "service") if fields.get(k))
        detail = fields.get("error") or fields.get("reason") or ""
        if event == "rollback":
            where, detail = "", f"rolling back on {', '.join(fields.get('hosts', []))}"
        print(f"[{elapsed:6.1f}s] {event:<8} {fields.get('step', ''):<12} {where:<20} {detail}", flush=True)

    return show


def run(args) -> int:
    target = load_target(args)
    env = target.environment
    hosts = fleet.open_hosts(env.hosts, identity_file=target.identity_file, known_hosts_file=target.known_hosts_file, timeout=args.timeout)
    try:
        plan = plan_deploy(env, fleet.observe_all(hosts), target.revision)
        print(report.plan_text(plan))
        if plan.in_sync:
            print("apply: nothing to change")
            return 0
        if not args.yes:
            if not (is_tty() and sys.stdin.isatty()):
                raise StalledError("apply: not on a terminal; pass --yes to apply without asking")
            if input("apply these changes? [y/N] ").strip().lower() not in ("y", "yes"):
                print("apply: cancelled, nothing changed")
                return 1
        outcome = run_plan(env, hosts, plan, report=progress_printer())
        rows = report.running_rows(env, fleet.observe_all(hosts))
    finally:
        fleet.close_hosts(hosts)
    print(f"{env.name} @ {target.revision[:12]}: {outcome.result} in {outcome.finished - outcome.started:.1f}s")
    if outcome.failure:
        print(f"failure: {outcome.failure}")
        for item in outcome.evidence:
            print("  " + item.replace("\n", "\n  "))
    print("now running:")
    print(report.running_text(rows))
    return EXIT_ROLLED_BACK if outcome.result == "rolled-back" else 0
