"""The sandbox network: one bridge in the root namespace, one namespace per host.

No forwarding and no NAT in the root namespace, on purpose: the hosts reach
the bridge address (registry, PostgreSQL) and each other, and nothing of
ours can send a packet beyond this machine.
"""

from __future__ import annotations

import json
import os

from reconciler.sandbox.layout import BRIDGE, BRIDGE_ADDRESS, NETNS_PREFIX, PREFIX_LEN, HostLayout
from reconciler.sandbox.procs import run


def _links(netns: str | None = None) -> list[dict]:
    argv = ["ip", "-j"] + (["-n", netns] if netns else []) + ["addr", "show"]
    proc = run(argv, what="network", check=False)
    if proc.returncode != 0:
        return []
    return json.loads(proc.stdout or "[]")


def _has_address(links: list[dict], name: str, address: str) -> bool:
    for link in links:
        if link.get("ifname") == name:
            up = "UP" in link.get("flags", [])
            return up and any(a.get("local") == address for a in link.get("addr_info", []))
    return False


def namespaces() -> list[str]:
    """Our namespaces (``rcl-*``) that exist now, live or stale."""
    proc = run(["ip", "-j", "netns", "list"], what="network", check=False)
    names = [n["name"] for n in json.loads(proc.stdout or "[]")] if proc.stdout.strip() else []
    return sorted(n for n in names if n.startswith(NETNS_PREFIX))


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/var/run/netns/{name}").st_ino
    except OSError:
        return None


# Frames between two ports of our bridge pass the root FORWARD chain when
# br_netfilter is loaded, and a system dockerd sets its policy to DROP: this
# lets host talk to host.  It accepts nothing that leaves the bridge.
_INTRA_BRIDGE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def _allow_intra_bridge() -> None:
    if run(["iptables", "-C", *_INTRA_BRIDGE], what="network", check=False).returncode != 0:
        run(["iptables", "-I", *_INTRA_BRIDGE], what="network", check=False)


def ensure_bridge() -> None:
    links = _links()
    _allow_intra_bridge()
    if _has_address(links, BRIDGE, BRIDGE_ADDRESS):
        return
    if not any(link.get("ifname") == BRIDGE for link in links):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"], what="network bridge")
    run(["ip", "addr", "replace", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE], what="network bridge")
    run(["ip", "link", "set", BRIDGE, "up"], what="network bridge")


def host_network_healthy(host: HostLayout) -> bool:
    if host.netns not in namespaces():
        return False
    inside = _links(host.netns)
    if not (_has_address(inside, "eth0", host.address) and
            any(link.get("ifname") == "lo" and "UP" in link.get("flags", []) for link in inside)):
        return False
    outside = [link for link in _links() if link.get("ifname") == host.veth]
    return bool(outside) and outside[0].get("master") == BRIDGE and "UP" in outside[0].get("flags", [])


def create_host_network(host: HostLayout) -> None:
    """Create the namespace and veth pair from scratch; callers delete stale ones first."""
    run(["ip", "netns", "add", host.netns], what=f"network {host.name}")
    run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns],
        what=f"network {host.name}")
    run(["ip", "link", "set", host.veth, "master", BRIDGE], what=f"network {host.name}")
    run(["ip", "link", "set", host.veth, "up"], what=f"network {host.name}")
    n = ["ip", "-n", host.netns]
    run(n + ["link", "set", "lo", "up"], what=f"network {host.name}")
    run(n + ["addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0"], what=f"network {host.name}")
    run(n + ["link", "set", "eth0", "up"], what=f"network {host.name}")
    run(n + ["route", "add", "default", "via", BRIDGE_ADDRESS], what=f"network {host.name}")


def delete_host_network(netns: str) -> None:
    """Remove a namespace and its veth; safe when either is already gone."""
    run(["ip", "link", "del", f"{netns}-br"], what="network", check=False)
    run(["ip", "netns", "delete", netns], what="network", check=False)


def delete_bridge() -> None:
    run(["ip", "link", "del", BRIDGE], what="network", check=False)
    while run(["iptables", "-D", *_INTRA_BRIDGE], what="network", check=False).returncode == 0:
        pass
