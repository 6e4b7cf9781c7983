"""Figure: against a peer (Ansible's ``community.docker.docker_container`` over SSH).

Not measured yet: installing ansible-core and the community.docker collection
into the venv and writing the equivalent playbooks (no-op check, one-service
change) did not fit in the first round of the benchmarks.  The row says so.
"""

from __future__ import annotations

from bench.common import Row


def run() -> list[Row]:
    return [Row.na("vs Ansible (no-op check, 1-service change)", "report the ratio",
                   "not measured yet: ansible-core + community.docker playbooks on the same fleet are left to do")]
