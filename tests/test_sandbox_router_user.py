"""The sandbox's HAProxy runs as the deploy user, and a root one (left by older code) is not reused.  No fleet."""

from __future__ import annotations

from pathlib import Path

from reconciler.sandbox import haproxy, layout
from reconciler.sandbox.layout import DEPLOY_USER, SSH_USER


def test_the_product_reaches_sandbox_hosts_as_the_deploy_user():
    assert SSH_USER == DEPLOY_USER == "rcl-deploy"


def test_haproxy_is_started_in_the_hosts_namespace_as_the_deploy_user():
    host = layout.Layout(Path("/s")).host(2)
    argv = haproxy.argv(host)
    assert argv[:2] == ["nsenter", "--net=/var/run/netns/rcl-h2"]
    assert argv[2:6] == ["setpriv", f"--reuid={DEPLOY_USER}", f"--regid={DEPLOY_USER}", "--init-groups"]
    assert argv[-6:] == ["-W", "-db", "-f", "/s/h2/haproxy/haproxy.cfg", "-p", "/s/h2/haproxy/haproxy.pid"]
    # It may read what root wrote while older sessions do, and write nothing more than the user may.
    assert ("--ambient-caps=+dac_read_search" in argv) == haproxy.READ_ROOT_FILES


def test_a_router_run_by_root_is_not_healthy_for_reuse(monkeypatch):
    host = layout.Layout(Path("/s")).host(1)
    monkeypatch.setattr(haproxy.procs, "live_pid", lambda path: 4242)
    monkeypatch.setattr(haproxy.procs, "cmdline", lambda pid: f"haproxy -f {host.haproxy_config}")
    monkeypatch.setattr(haproxy, "answers", lambda h: True)
    monkeypatch.setattr(haproxy, "_deploy_ids", lambda: (1001, 1001))
    monkeypatch.setattr(haproxy, "_owner_uid", lambda pid: 0)
    assert not haproxy.healthy(host)
    monkeypatch.setattr(haproxy, "_owner_uid", lambda pid: 1001)
    assert haproxy.healthy(host)
