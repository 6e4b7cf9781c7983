"""The agent's signature on what it writes to git: its commits and its notes.

Signed as ``git commit -S`` with ``gpg.format=ssh`` signs (``ssh-keygen -Y
sign -n git`` over the commit's text, stored in its ``gpgsig`` header), so
``git verify-commit``, ``reconciler.adapters.signatures`` and ``git log
--show-signature`` with the agent's public key in ``allowed_signers`` all
check it alike.  The key is an SSH private key file on the agent's machine
(``--signing-key``); its content never leaves ``ssh-keygen``.
"""

from __future__ import annotations

import subprocess

import pygit2

from reconciler.errors import StalledError

_TIMEOUT = 30


def sign(content: str, signing_key: str) -> str:
    """The armored SSH signature of a commit's text ``content``."""
    try:
        signed = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", "git", "-f", signing_key],
                                input=content.encode(), capture_output=True, timeout=_TIMEOUT)
    except FileNotFoundError:
        raise StalledError("signing the agent's commit: ssh-keygen is not installed (Debian package openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise StalledError(f"signing the agent's commit with {signing_key}: ssh-keygen did not answer "
                           f"within {_TIMEOUT} s (a key with a passphrase cannot be used by the agent)") from None
    if signed.returncode != 0:
        raise StalledError(f"signing the agent's commit with {signing_key} failed: "
                           f"{signed.stderr.decode(errors='replace').strip() or 'ssh-keygen exit ' + str(signed.returncode)}")
    return signed.stdout.decode()


def signed_commit(repo: pygit2.Repository, author: pygit2.Signature, committer: pygit2.Signature, message: str,
                  tree: pygit2.Oid, parents: list[pygit2.Oid], signing_key: str) -> pygit2.Oid:
    """A new signed commit object (no ref moves)."""
    content = repo.create_commit_string(author, committer, message, tree, parents)
    return repo.create_commit_with_signature(content, sign(content, signing_key), "gpgsig")


def sign_tip(repo: pygit2.Repository, ref: str, signing_key: str) -> pygit2.Oid | None:
    """Replace the unsigned commit at the tip of ``ref`` by the same commit
    (tree, parents, author, committer, message) signed with ``signing_key``.

    For refs libgit2 writes itself (``create_note``): it builds the tree
    (the notes fanout included) and this makes the commit ours.  The ref
    moves only if it still points at the commit that was signed (libgit2's
    set_target compares the old value), so a concurrent writer's commit is
    never dropped: the commit then stays unsigned (None), which
    ``notes_trust`` reports as such."""
    reference = repo.references[ref]
    unsigned = repo[reference.target].peel(pygit2.Commit)
    new = signed_commit(repo, unsigned.author, unsigned.committer, unsigned.message, unsigned.tree_id,
                        list(unsigned.parent_ids), signing_key)
    try:
        reference.set_target(new, "reconciler: sign the notes commit")
    except pygit2.GitError:
        return None
    return new
