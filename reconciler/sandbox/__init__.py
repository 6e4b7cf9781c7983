"""The local fleet (``reconciler sandbox up|down|status``): real hosts to deploy to.

N network namespaces each running dockerd and sshd, a registry with the demo
images, and a PostgreSQL cluster, all on this machine and reachable only from
it.  Other code reads what is up with ``load()``::

    from reconciler import sandbox
    fleet = sandbox.load()            # Sandbox, from <state>/sandbox.json
    access = fleet.hosts[0].ssh_access()
    fleet.images["v1"]                # "10.213.0.1:5000/demo/web:v1@sha256:..."

``up``/``down``/``status`` live in ``reconciler.sandbox.fleet`` (imported
lazily here so ``load`` stays cheap).
"""

from reconciler.sandbox.description import Sandbox, SandboxHost, load
from reconciler.sandbox.layout import STATE_DIR_ENV, state_dir

__all__ = ["Sandbox", "SandboxHost", "load", "state_dir", "STATE_DIR_ENV", "up", "down", "status"]


def up(hosts: int = 3) -> Sandbox:
    from reconciler.sandbox import fleet

    return fleet.up(hosts)


def down(*, purge: bool = False) -> None:
    from reconciler.sandbox import fleet

    fleet.down(purge=purge)


def status():
    from reconciler.sandbox import fleet

    return fleet.status()
