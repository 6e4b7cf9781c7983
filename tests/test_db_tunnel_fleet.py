"""database.via_host on the real fleet: the agent reaches PostgreSQL through
a host's pinned SSH connection, and a whole deploy (backup, verify, expand)
runs through that tunnel."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reconciler.adapters import fleet as hosts_fleet
from reconciler.adapters.db import backup, verify
from reconciler.adapters.db.images import tunnel_for
from reconciler.core.model import Host
from tests.dbfleet import columns, create_database, drop_database, make_db_env_repo, migrating_image, sql, web
from tests.envrepo import remove_containers, serving
from tests.test_dbphase_fleet import ADD_TAG, deploy

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def _bridge_dsn(dsn: str) -> str:
    """The sandbox DSN with the server's bridge address, which the hosts reach."""
    return make_conninfo(dsn, host="10.213.0.1")


def _client_address(dsn: str) -> str:
    return sql(dsn, "SELECT host(inet_client_addr())")[0][0]


def test_a_tunnel_through_a_host_carries_queries_and_pg_dump(fleet, tmp_path):
    dsn = create_database(fleet, "rdb_tunnel")
    try:
        h2 = fleet.host("h2")
        opened = hosts_fleet.open_hosts([Host("h2", h2.address, h2.user, h2.port)], identity_file=fleet.identity_file,
                                        known_hosts_file=fleet.known_hosts_file)
        try:
            with tunnel_for(_bridge_dsn(dsn), opened, "h2") as tunnel:
                through = tunnel.dsn(_bridge_dsn(dsn))
                assert conninfo_to_dict(through)["host"] == "127.0.0.1"
                # The server sees the connection come from h2, not from here.
                assert _client_address(through) == h2.address
                sql(through, "CREATE TABLE t (id int)")
                sql(through, "INSERT INTO t SELECT generate_series(1, 1000)")
                taken = backup(through, tmp_path / "store", commit="0" * 12, environment="tunnel")
                verify(taken)
                assert taken.size > 0
        finally:
            hosts_fleet.close_hosts(opened)
    finally:
        drop_database(fleet, "rdb_tunnel")


def test_a_deploy_with_via_host_backs_up_and_migrates_through_the_tunnel(fleet, tmp_path, monkeypatch):
    name = "dviahost"
    dsn = create_database(fleet, f"rdb_{name}")
    sql(dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
    monkeypatch.setenv("RECONCILER_BACKUP_DIR", str(tmp_path / "backups"))
    repo = make_db_env_repo(tmp_path / "envrepo", fleet, name, _bridge_dsn(dsn))
    from reconciler.adapters.db import tunnel

    carried = []
    real_carry = tunnel.Tunnel._carry
    monkeypatch.setattr(tunnel.Tunnel, "_carry", lambda self, client: (carried.append(self.host), real_carry(self, client)))
    try:
        repo.commit(web(migrating_image(fleet, ADD_TAG, version="v2"), 18290))
        env_file = repo.path / "environments" / name / "environment.yaml"
        env_file.write_text(env_file.read_text().replace("  backup: always\n", "  backup: always\n  via_host: h3\n"))
        _commit_all(repo.path, "reach the database through h3")
        result = deploy(repo)
        assert result.outcome.result == "deployed", result.outcome.failure
        assert columns(dsn, "notes")["tag"] == ("text", "YES")
        assert set(serving(fleet, 18290).values()) == {"demo-web v2"}
        # Every database connection of the deploy went through h3's tunnel
        # (pending check, backup, verify's server version, migrations).
        assert len(carried) >= 3 and set(carried) == {"h3"}
    finally:
        remove_containers(fleet, f"{name}-")
        drop_database(fleet, f"rdb_{name}")


def _commit_all(path, message: str) -> str:
    import pygit2

    git = pygit2.Repository(str(path))
    git.index.add_all()
    git.index.write()
    tree = git.index.write_tree()
    head = git[git.head.target]
    sig = head.author
    return str(git.create_commit("HEAD", sig, sig, message, tree, [head.id]))
