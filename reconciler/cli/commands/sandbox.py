"""``reconciler sandbox up|down|status``: the local fleet tests and the demo deploy to."""

from __future__ import annotations

import argparse
import json



def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="bring the fleet up (idempotent: reuses what is healthy)")
    up.add_argument("--hosts", type=int, default=3, metavar="N", help="number of hosts (default 3)")
    up.add_argument("--json", action="store_true", help="print the description as JSON")
    down = sub.add_parser("down", help="stop every daemon, unmount, delete namespaces")
    down.add_argument("--purge", action="store_true", help="also delete the state dir (keys, images, data)")
    status = sub.add_parser("status", help="say what is up")
    status.add_argument("--json", action="store_true", help="print the status as JSON")


def _print_sandbox(sandbox) -> None:
    print(f"sandbox up in {sandbox.elapsed_seconds:.1f}s  (state: {sandbox.state_dir})")
    print("hosts:")
    for h in sandbox.hosts:
        print(f"  {h.name}  {h.user}@{h.address}:{h.port}  docker socket {h.docker_socket}")
    print(f"identity:    {sandbox.identity_file}")
    print(f"known_hosts: {sandbox.known_hosts_file}")
    print(f"registry:    {sandbox.registry}")
    print("images:")
    for tag, ref in sandbox.images.items():
        print(f"  {tag:14} {ref}")
    print(f"database:    {sandbox.database_dsn}")
    h = sandbox.hosts[0]
    print(f"try:         ssh -i {h.identity_file} -o UserKnownHostsFile={h.known_hosts_file} "
          f"{h.user}@{h.address} docker ps")


def _print_status(st) -> None:
    word = {True: "up", False: "DOWN", None: "-"}
    print(f"state: {st.state_dir}  description: {'yes' if st.described else 'no'}")
    for h in st.hosts:
        print(f"  {h.name} {h.address}  netns {word[h.netns]}  dockerd {word[h.dockerd]}  sshd {word[h.sshd]}")
    if not st.hosts:
        print("  no hosts")
    print(f"registry: {word[st.registry]}  postgres: {word[st.postgres]}")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from reconciler.sandbox import fleet

    if args.action == "up":
        sandbox = fleet.up(args.hosts)
        if args.json:
            print(json.dumps(sandbox.to_json(), indent=2))
        else:
            _print_sandbox(sandbox)
        return 0
    if args.action == "down":
        fleet.down(purge=args.purge)
        print("sandbox down: no namespace, daemon or mount left")
        return 0
    st = fleet.status()
    if args.json:
        print(json.dumps(asdict(st) | {"all_up": st.all_up}, indent=2))
    else:
        _print_status(st)
    return 0 if st.all_up else 1
