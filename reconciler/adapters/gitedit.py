"""Commits a person asks for, written without a checkout: ``promote`` (the
image proven healthy in one environment, into another's file), ``revert``
(an ordinary three-way revert), and the levers' edits (``commit_files``).
Each edit changes one scalar in the text itself (``set_scalar``), so every
comment and layout choice of the file survives.  pygit2 and ruamel.yaml."""

from __future__ import annotations

from pathlib import Path

import pygit2

from reconciler.adapters.githistory import proven_image
from reconciler.adapters.gitlog import environment_branch, signed_commit, user_signature
from reconciler.core.record import iso
from reconciler.errors import StalledError


def set_scalar(text: str, keys: tuple[str, ...], value: str) -> str:
    """``text`` with the scalar at ``keys`` replaced by ``value``, nothing else touched.

    ruamel.yaml's round-trip parser finds the scalar (line and column, and
    whether it is quoted); the edit is then made in the text itself, so every
    comment, blank line and indentation choice survives byte for byte.
    """
    from ruamel.yaml import YAML

    # The round-trip loader builds plain mappings and scalars only (never
    # arbitrary objects); it is what gives each value its line and column.
    round_trip = YAML(typ="rt")
    node = round_trip.load(text)
    for key in keys[:-1]:
        node = node[key]
    last = keys[-1]
    if last not in node:
        raise StalledError(f"no {'.'.join(keys)} to edit")
    line_no, col = node.lc.value(last)
    lines = text.splitlines(keepends=True)
    line = lines[line_no]
    body = line.rstrip("\r\n")
    ending = line[len(body):]
    quote = body[col] if body[col] in "'\"" else ""
    if quote:
        end = body.index(quote, col + 1) + 1
    else:
        comment = body.find(" #", col)
        end = comment if comment >= 0 else len(body)
        end = len(body[:end].rstrip())
    lines[line_no] = body[:col] + f"{quote}{value}{quote}" + body[end:] + ending
    new = "".join(lines)
    check = round_trip.load(new)
    for key in keys:
        check = check[key]
    if str(check) != value:
        raise StalledError(f"editing {'.'.join(keys)} in place went wrong; edit by hand")
    return new


def service_file(repo: pygit2.Repository, commit: pygit2.Commit, env: str, service: str) -> tuple[str, tuple[str, ...]]:
    """Where ``service`` of ``env`` is written: (path, keys to its image)."""
    own = f"environments/{env}/services/{service}.yaml"
    if _blob_text(repo, commit, own) is not None:
        return own, ("image",)
    return f"environments/{env}/environment.yaml", ("services", service, "image")


def _blob_text(repo: pygit2.Repository, commit: pygit2.Commit, path: str) -> str | None:
    try:
        entry = commit.tree[path]
    except KeyError:
        return None
    return repo[entry.id].data.decode("utf-8")


def commit_files(repo: pygit2.Repository, branch_ref: str, changes: dict[str, str], message: str, signature: pygit2.Signature,
                 signing_key: str | None = None) -> str:
    """A commit on ``branch_ref`` replacing ``changes`` (path -> text), no checkout needed,
    signed with ``signing_key`` when given (``WaitingError`` if the branch moved meanwhile).

    In a working tree whose HEAD is that branch, the files and the index are
    updated too, and an uncommitted edit of the same file refuses the commit
    rather than being overwritten.
    """
    parent = repo.references[branch_ref].peel(pygit2.Commit)
    checked_out = not repo.is_bare and not repo.head_is_detached and repo.head.name == branch_ref
    if checked_out:
        for path in changes:
            status = repo.status_file(path)
            if status not in (pygit2.enums.FileStatus.CURRENT, 0):
                raise StalledError(f"{path} has uncommitted changes; commit or stash them first")
    index = pygit2.Index()
    index.read_tree(parent.tree)
    for path, text in changes.items():
        mode = parent.tree[path].filemode if path in parent.tree else pygit2.enums.FileMode.BLOB
        index.add(pygit2.IndexEntry(path, repo.create_blob(text.encode("utf-8")), mode))
    tree = index.write_tree(repo)
    if signing_key:
        signed = signed_commit(repo, branch_ref, signature, message, tree, parent.id, signing_key)
        if signed is None:
            from reconciler.errors import WaitingError

            raise WaitingError(f"{branch_ref} moved while the commit was signed (a push won); run it again")
        new = pygit2.Oid(hex=signed)
    else:
        new = repo.create_commit(branch_ref, signature, signature, message, tree, [parent.id])
    if checked_out:
        for path, text in changes.items():
            Path(repo.workdir, path).write_text(text, encoding="utf-8")
            repo.index.add(path)
        repo.index.write()
    return str(new)


def promote(repo: pygit2.Repository, service: str, source: str, target: str, signature: pygit2.Signature | None = None) -> tuple[str, str]:
    """Commit to ``target``'s branch the image ``service`` runs healthy in ``source``.

    Returns (commit id, image).  The digest comes from the source's notes,
    so only what was deployed and passed its health checks can be promoted.
    """
    found = proven_image(repo, source, service)
    if found is None:
        raise StalledError(f"{service} has no healthy deploy recorded in {source}; nothing to promote")
    image, proof = found
    ref = environment_branch(repo, target)
    head = repo.references[ref].peel(pygit2.Commit)
    path, keys = service_file(repo, head, target, service)
    text = _blob_text(repo, head, path)
    if text is None:
        raise StalledError(f"{path} does not exist on {ref}")
    new_text = set_scalar(text, keys, image)
    if new_text == text:
        raise StalledError(f"{target} already runs {image} for {service}")
    name, _, digest = image.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2] or "untagged"
    message = (
        f"Promote {service} to {target}: {tag} ({digest[:19] or 'no digest'})\n\n"
        f"{image}\nproven healthy in {source} at {proof.commit} ({iso(proof.finished)}).\n"
    )
    return commit_files(repo, ref, {path: new_text}, message, signature or user_signature(repo)), image


def revert(repo: pygit2.Repository, commit: str, branch_ref: str, signature: pygit2.Signature | None = None) -> str:
    """An ordinary revert of ``commit`` on ``branch_ref`` (a three-way merge of
    the text, so the files keep every comment and their layout)."""
    target = repo.revparse_single(commit).peel(pygit2.Commit)
    head = repo.references[branch_ref].peel(pygit2.Commit)
    index = repo.revert_commit(target, head)
    if index.conflicts is not None:
        paths = sorted({(e[1] or e[2] or e[0]).path for e in index.conflicts})
        raise StalledError(f"reverting {str(target.id)[:12]} conflicts with later changes in: {', '.join(paths)}")
    changes = {}
    for entry in index:
        try:
            old = head.tree[entry.path].id
        except KeyError:
            old = None
        if old != entry.id:
            changes[entry.path] = repo[entry.id].data.decode("utf-8")
    removed = [p for p in _paths(head.tree) if p not in {e.path for e in index}]
    if removed:
        raise StalledError(f"reverting would delete {', '.join(removed)}; do that by hand")
    if not changes:
        raise StalledError(f"{str(target.id)[:12]} changes nothing on {branch_ref} any more")
    subject = (target.message or "").splitlines()[0] if target.message else ""
    message = f'Revert "{subject}"\n\nThis reverts commit {target.id}.\n'
    return commit_files(repo, branch_ref, changes, message, signature or user_signature(repo))


def _paths(tree: pygit2.Tree, prefix: str = "") -> list[str]:
    out = []
    for entry in tree:
        if entry.type_str == "tree":
            out.extend(_paths(entry, prefix + entry.name + "/"))
        else:
            out.append(prefix + entry.name)
    return out
