"""The git adapter: working trees and commits (bare repositories included) -> Snapshot."""

from __future__ import annotations

import os
import pygit2
import pytest

from reconciler.core.schema import MAX_FILE_BYTES, validate
from reconciler.adapters.source import SourceError, head_commit, snapshot_commit, snapshot_worktree
from schema_helpers import ENV, KNOWN_HOSTS

SIGNATURE = pygit2.Signature("test", "test@example.invalid")


def _write_tree(repo: pygit2.Repository, files: dict[str, bytes], links: dict[str, str] | None = None) -> pygit2.Oid:
    """A tree object built in memory: works on a bare repository, no checkout."""
    entries: dict[str, object] = {}
    for path, data in files.items():
        entries[path] = (repo.create_blob(data), pygit2.enums.FileMode.BLOB)
    for path, target in (links or {}).items():
        entries[path] = (repo.create_blob(target.encode()), pygit2.enums.FileMode.LINK)

    def build(prefix: str) -> pygit2.Oid:
        builder = repo.TreeBuilder()
        children = {p[len(prefix) :].split("/", 1)[0] for p in entries if p.startswith(prefix)}
        for name in sorted(children):
            full = prefix + name
            if full in entries:
                oid, mode = entries[full]
                builder.insert(name, oid, mode)
            else:
                builder.insert(name, build(full + "/"), pygit2.enums.FileMode.TREE)
        return builder.write()

    return build("")


def _commit(repo, files, links=None, parents=(), ref="refs/heads/main") -> str:
    tree = _write_tree(repo, files, links)
    return str(repo.create_commit(ref, SIGNATURE, SIGNATURE, "test", tree, list(parents)))


VALID = {"environments/test/environment.yaml": ENV.encode(), "environments/test/known_hosts": KNOWN_HOSTS.encode()}


def test_snapshot_commit_reads_a_bare_repository(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "env.git"), bare=True, initial_head="main")
    first = _commit(repo, VALID)
    broken = dict(VALID, **{"environments/test/environment.yaml": ENV.replace("hosts: [web]", "hosts: [nope]").encode()})
    second = _commit(repo, broken, parents=[first])
    assert head_commit(tmp_path / "env.git", "main") == second
    assert head_commit(tmp_path / "env.git") == second
    old = snapshot_commit(tmp_path / "env.git", first)
    assert old.revision == first and validate(old) == []
    new = snapshot_commit(tmp_path / "env.git", "main")
    assert [p.split(": ")[1] for p in validate(new)] == ["services.web.hosts"]


def test_snapshot_commit_records_links_and_oversize_without_reading_them(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "env.git"), bare=True)
    files = dict(VALID, **{"big.bin": b"x" * (MAX_FILE_BYTES + 1)})
    rev = _commit(repo, files, links={"environments/test/escape": "../../../etc/shadow"})
    snap = snapshot_commit(tmp_path / "env.git", rev)
    assert snap.oversize == {"big.bin": MAX_FILE_BYTES + 1}
    assert "big.bin" not in snap.files
    assert snap.links == {"environments/test/escape": "../../../etc/shadow"}
    assert validate(snap) == ["environments/test/escape:1:1: symlink to '../../../etc/shadow' leaves the repository"]


def test_snapshot_commit_of_a_subdirectory(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "mono.git"), bare=True)
    rev = _commit(repo, {f"deploy/{k}": v for k, v in VALID.items()} | {"README": b"x"})
    snap = snapshot_commit(tmp_path / "mono.git", rev, subdir="deploy")
    assert set(snap.files) == set(VALID)
    with pytest.raises(SourceError):
        snapshot_commit(tmp_path / "mono.git", rev, subdir="nowhere")


def test_unknown_revision_and_not_a_repository(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "env.git"), bare=True)
    _commit(repo, VALID)
    with pytest.raises(SourceError, match="unknown revision"):
        snapshot_commit(tmp_path / "env.git", "no-such-branch")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SourceError, match="not a git repository"):
        head_commit(tmp_path / "plain")


def test_pushed_commit_in_quarantine_is_readable(tmp_path, monkeypatch):
    """In pre-receive, the pushed objects live only in GIT_OBJECT_DIRECTORY."""
    target = pygit2.init_repository(str(tmp_path / "target.git"), bare=True)
    _commit(target, VALID)
    quarantine = pygit2.init_repository(str(tmp_path / "incoming.git"), bare=True)
    pushed = _commit(quarantine, VALID | {"extra": b"new"})
    with pytest.raises(SourceError):
        snapshot_commit(tmp_path / "target.git", pushed)
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(tmp_path / "incoming.git" / "objects"))
    assert "extra" in snapshot_commit(tmp_path / "target.git", pushed).files


def test_snapshot_worktree(tmp_path):
    for path, data in VALID.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("ignored")
    (tmp_path / "big").write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    os.symlink("/etc/passwd", tmp_path / "environments" / "test" / "passwd")
    os.symlink("known_hosts", tmp_path / "environments" / "test" / "alias")
    os.symlink("/etc", tmp_path / "environments" / "test" / "etcdir")
    snap = snapshot_worktree(tmp_path)
    assert set(snap.files) == set(VALID)
    assert snap.oversize == {"big": MAX_FILE_BYTES + 1}
    assert snap.links == {"environments/test/passwd": "/etc/passwd", "environments/test/alias": "known_hosts", "environments/test/etcdir": "/etc"}
    assert snap.revision is None
    assert validate(snap) == [
        "environments/test/etcdir:1:1: symlink to '/etc' leaves the repository",
        "environments/test/passwd:1:1: symlink to '/etc/passwd' leaves the repository",
    ]


def test_snapshot_is_read_only():
    from reconciler.core.schema import Snapshot

    snap = Snapshot(files={"a": b"1"})
    with pytest.raises(TypeError):
        snap.files["b"] = b"2"  # type: ignore[index]
