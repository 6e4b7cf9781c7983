"""``up``, ``down`` and ``status`` of the local fleet: the imperative shell.

``up`` reuses every part that is healthy and rebuilds the rest, so it is the
answer to any half-broken state; ``down`` stops everything we may have
started, found by pidfile, command line, namespace and cgroup, and checks
that no namespace, daemon or mount is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import SandboxError
from reconciler.sandbox import description, engines, haproxy, images, netns, procs, registry, router_image, sshd
from reconciler.sandbox.layout import (DEPLOY_USER, DOCKER_GROUP, IMAGE_REPOSITORY, MAX_HOSTS, NETNS_PREFIX, REGISTRY,
                                       SSH_PORT, SSH_USER, HostLayout, Layout, layout)

DEFAULT_HOSTS = 3


def require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root: it creates network namespaces and a bridge, "
                           "and runs dockerd, sshd and PostgreSQL as system daemons; "
                           "run it as root (e.g. `sudo .venv/bin/reconciler sandbox up`)")


def _postgres():
    """The PostgreSQL part of the sandbox, owned by its own module."""
    from reconciler.sandbox import postgres

    return postgres


@contextlib.contextmanager
def _exclusive(lay: Layout):
    """One ``up``/``down`` at a time: parallel test sessions share the one fleet."""
    lay.root.mkdir(parents=True, exist_ok=True)
    with open(lay.root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _known_host_dirs(lay: Layout) -> list[HostLayout]:
    """Every host a previous run may have left: by state dir and by namespace."""
    indexes = set()
    if lay.root.exists():
        indexes |= {int(p.name[1:]) for p in lay.root.glob("h*") if p.name[1:].isdigit()}
    indexes |= {int(n[len(NETNS_PREFIX) + 1:]) for n in netns.namespaces()
                if n.startswith(NETNS_PREFIX + "h") and n[len(NETNS_PREFIX) + 1:].isdigit()}
    return [lay.host(i) for i in sorted(indexes) if 1 <= i <= MAX_HOSTS]


def _teardown_host(host: HostLayout) -> None:
    haproxy.stop(host)
    engines.stop(host)
    sshd.stop(host)
    inode = netns.netns_inode(host.netns)
    if inode is not None:
        procs.stop_pids(procs.find_ours(path_marks=[], netns_inodes=[inode]), grace=3)
    procs.unmount_under(host.root)
    netns.delete_host_network(host.netns)


def up(hosts: int = DEFAULT_HOSTS) -> description.Sandbox:
    """Bring the fleet up, reusing whatever part of it is healthy; return its description."""
    require_root()
    started = time.monotonic()
    lay = layout()
    lay.check_socket_paths(hosts)
    with _exclusive(lay):
        return _up(lay, hosts, started)


def _up(lay: Layout, hosts: int, started: float) -> description.Sandbox:
    os.chmod(lay.root, 0o755)
    wanted = lay.hosts(hosts)
    for stale in _known_host_dirs(lay):
        if stale.index > hosts:
            _teardown_host(stale)

    ensure_deploy_user()
    sshd.write_client_files(lay)
    netns.ensure_bridge()
    registry.start(lay)
    started_engines: dict[str, int] = {}
    for host in wanted:
        if not netns.host_network_healthy(host):
            _teardown_host(host)
            netns.create_host_network(host)
        if not engines.healthy(host):
            engines.stop(host)
            started_engines[host.name] = engines.start(host)

    with ThreadPoolExecutor(max_workers=4) as pool:
        # PostgreSQL listens on the bridge address too, so it starts after the bridge.
        database = pool.submit(_postgres().ensure_cluster, lay.root)
        # The router image too (sandbox/router_image.py): environments may run HAProxy from it.
        pushed = pool.submit(lambda: (registry.wait_ready(lay), router_image.push(REGISTRY),
                                      images.push_demo_images(REGISTRY, IMAGE_REPOSITORY))[2])
        pinned = [sshd.ensure(host, lay) for host in wanted]
        for host in wanted:
            engines.wait_ready(host, started_engines.get(host.name))
            ensure_socket_group(host)
        refs, dsn = pushed.result(), database.result()
    sshd.write_known_hosts(lay, pinned)
    # After the engines: stopping an unhealthy engine ends every process that
    # names the host's directory, a running HAProxy included.
    routers = {host.name: haproxy.ensure(host) for host in wanted}

    sandbox = description.Sandbox(
        state_dir=str(lay.root),
        hosts=tuple(description.SandboxHost(
            name=h.name, address=h.address, port=SSH_PORT, user=SSH_USER,
            identity_file=str(lay.identity_file), known_hosts_file=str(lay.known_hosts_file),
            docker_socket=str(h.docker_socket), netns=h.netns, router=routers[h.name]) for h in wanted),
        registry=REGISTRY,
        image_repository=f"{REGISTRY}/{IMAGE_REPOSITORY}",
        images=refs,
        database_dsn=dsn,
        identity_file=str(lay.identity_file),
        known_hosts_file=str(lay.known_hosts_file),
        elapsed_seconds=round(time.monotonic() - started, 2),
    )
    description.write(sandbox, lay.description)
    return description.load(lay.description)


def _remove_cgroups() -> None:
    """Empty container cgroup parents (``rcl-hN``) left by the engines; best effort."""
    roots = [Path("/sys/fs/cgroup")] + [p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir()]
    for root in roots:
        for parent in root.glob(f"{NETNS_PREFIX}h*"):
            for d in sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    d.rmdir()
                except OSError:
                    pass
            try:
                parent.rmdir()
            except OSError:
                pass


@dataclass(frozen=True)
class Leftovers:
    namespaces: tuple[str, ...]
    pids: tuple[int, ...]
    mounts: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.pids or self.mounts)


def leftovers(lay: Layout | None = None) -> Leftovers:
    """What of ours still exists: namespaces, processes, mounts under the state dir."""
    lay = lay or layout()
    inodes = [i for i in (netns.netns_inode(n) for n in netns.namespaces()) if i is not None]
    pids = procs.find_ours(path_marks=[str(lay.root) + "/"], netns_inodes=inodes,
                           cgroup_marks=[procs.CGROUP_MARK])
    return Leftovers(tuple(netns.namespaces()), tuple(pids), tuple(procs.mounts_under(lay.root)))


def down(*, purge: bool = False) -> None:
    """Stop everything the sandbox runs; keep keys, images and data unless ``purge``."""
    require_root()
    lay = layout()
    with _exclusive(lay):
        _down(lay)
    if purge and lay.root.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(lay.root)], check=False)


def _down(lay: Layout) -> None:
    try:
        _postgres().stop_cluster(lay.root)
    except SandboxError:
        pass  # the process scan below stops it the hard way
    for host in _known_host_dirs(lay):
        _teardown_host(host)
    registry.stop(lay)
    left = leftovers(lay)
    procs.stop_pids(left.pids, grace=3)
    procs.unmount_under(lay.root)
    for name in netns.namespaces():
        netns.delete_host_network(name)
    netns.delete_bridge()
    _remove_cgroups()
    lay.description.unlink(missing_ok=True)
    left = leftovers(lay)
    if left:
        raise SandboxError(f"down left behind namespaces {list(left.namespaces)}, processes "
                           f"{list(left.pids)}, mounts {list(left.mounts)}")


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    netns: bool
    dockerd: bool
    sshd: bool
    router: bool = False


@dataclass(frozen=True)
class Status:
    state_dir: str
    hosts: tuple[HostStatus, ...]
    registry: bool
    postgres: bool | None  # None: no database was brought up
    described: bool  # sandbox.json exists

    @property
    def all_up(self) -> bool:
        return (self.described and bool(self.hosts) and self.registry and self.postgres is not False
                and all(h.netns and h.dockerd and h.sshd and h.router for h in self.hosts))


def _postgres_answers(dsn: str | None) -> bool | None:
    if not dsn:
        return None
    try:
        return subprocess.run(["pg_isready", "-q", "-t", "2", "-d", dsn], check=False).returncode == 0
    except FileNotFoundError:
        return False


def status() -> Status:
    lay = layout()
    try:
        sandbox = description.load(lay.description)
        dsn, described, names = sandbox.database_dsn, True, {h.name for h in sandbox.hosts}
    except SandboxError:
        dsn, described, names = None, False, set()
    namespaces = set(netns.namespaces())
    # The described hosts, and any other whose namespace is still there;
    # not every h* directory (those keep host keys after a smaller ``up``).
    ours = [h for h in _known_host_dirs(lay) if h.name in names or h.netns in namespaces]
    hosts = tuple(HostStatus(h.name, h.address, h.netns in namespaces, engines.healthy(h), sshd.healthy(h),
                             haproxy.healthy(h)) for h in ours)
    return Status(str(lay.root), hosts, registry.healthy(lay), _postgres_answers(dsn), described)


def ensure_deploy_user() -> None:
    """The deploy user: a member of the docker group, key login only.

    ``useradd`` leaves the account locked ('!'), which sshd without PAM
    refuses even for a key; '*' is no password at all, and not locked."""
    import grp
    import pwd

    try:
        grp.getgrnam(DOCKER_GROUP)
    except KeyError:
        procs.run(["groupadd", "--system", DOCKER_GROUP], what=f"create group {DOCKER_GROUP}")
    try:
        pwd.getpwnam(DEPLOY_USER)
    except KeyError:
        procs.run(["useradd", "--create-home", "--shell", "/bin/sh", "--groups", DOCKER_GROUP,
                   "--comment", "reconciler sandbox deploy user", DEPLOY_USER], what=f"create user {DEPLOY_USER}")
    if DEPLOY_USER not in grp.getgrnam(DOCKER_GROUP).gr_mem:
        procs.run(["usermod", "--append", "--groups", DOCKER_GROUP, DEPLOY_USER], what=f"add {DEPLOY_USER} to {DOCKER_GROUP}")
    procs.run(["usermod", "--password", "*", DEPLOY_USER], what=f"unlock {DEPLOY_USER} for key login")


def ensure_socket_group(host: HostLayout) -> None:
    """The host's engine socket: root:docker, mode 0660 (what dockerd does
    itself when the group exists as it starts; an engine started before
    the group was made is fixed in place, without a restart)."""
    import grp

    gid = grp.getgrnam(DOCKER_GROUP).gr_gid
    info = host.docker_socket.stat()
    if info.st_gid != gid:
        os.chown(host.docker_socket, 0, gid)
    if info.st_mode & 0o777 != 0o660:
        os.chmod(host.docker_socket, 0o660)
