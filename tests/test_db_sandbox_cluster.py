"""The sandbox's own PostgreSQL cluster: created, idempotent, recovers leftovers."""

from __future__ import annotations

import os
import socket
import stat

import psycopg
import pytest

from reconciler.adapters.db.testing import can_run_cluster, free_port, scratch_cluster
from reconciler.sandbox import postgres

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(not can_run_cluster(), reason="needs root and PostgreSQL server binaries"),
]


def _whoami(dsn: str) -> tuple[str, str]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute("SELECT current_user, current_database()").fetchone()


def test_cluster_serves_demo_as_reconciler_and_is_idempotent() -> None:
    with scratch_cluster() as (dsn, state_dir):
        port = int(dsn.rsplit(":", 1)[1].split("/")[0])
        assert dsn.startswith("postgresql://reconciler:") and dsn.endswith(f"@127.0.0.1:{port}/demo")
        assert _whoami(dsn) == ("reconciler", "demo")
        password = state_dir / "postgres" / "password"
        assert stat.S_IMODE(os.stat(password).st_mode) == 0o600
        assert postgres.ensure_cluster(state_dir, port=port) == dsn
        # Not Debian's main cluster: our data lives under the state dir.
        assert (state_dir / "postgres" / "data" / "PG_VERSION").exists()


def test_survives_stop_twice_lost_password_and_stale_pid() -> None:
    with scratch_cluster() as (dsn, state_dir):
        port = int(dsn.rsplit(":", 1)[1].split("/")[0])
        postgres.stop_cluster(state_dir)
        postgres.stop_cluster(state_dir)
        (state_dir / "postgres" / "password").unlink()
        # A pid file left by a crash, pointing at no live postmaster.
        (state_dir / "postgres" / "data" / "postmaster.pid").write_text("999999\n")
        new_dsn = postgres.ensure_cluster(state_dir, port=port)
        assert new_dsn != dsn  # a new password was generated and set
        assert _whoami(new_dsn) == ("reconciler", "demo")
        with pytest.raises(psycopg.OperationalError):
            _whoami(dsn)


def test_half_made_data_directory_is_recreated() -> None:
    with scratch_cluster() as (dsn, state_dir):
        port = int(dsn.rsplit(":", 1)[1].split("/")[0])
        postgres.stop_cluster(state_dir)
        (state_dir / "postgres" / "data" / "PG_VERSION").unlink()
        assert _whoami(postgres.ensure_cluster(state_dir, port=port)) == ("reconciler", "demo")


def test_listens_on_bridge_address_once_it_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    # 127.0.0.2 stands in for the bridge: it exists on lo without touching the fleet.
    with scratch_cluster() as (dsn, state_dir):
        port = int(dsn.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
        monkeypatch.setattr(postgres, "BRIDGE_ADDRESS", "127.0.0.2")
        postgres.ensure_cluster(state_dir, port=port)
        socket.create_connection(("127.0.0.2", port), timeout=2).close()


def test_absent_bridge_is_not_listened_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "BRIDGE_ADDRESS", "203.0.113.77")
    assert postgres.listen_addresses() == ("127.0.0.1",)


def test_free_port_is_a_port() -> None:
    assert 0 < free_port() < 65536
