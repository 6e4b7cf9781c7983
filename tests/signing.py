"""Throw-away signing keys for the signature tests: SSH keys made with
ssh-keygen, OpenPGP keys in a private GNUPGHOME, and `git` configured to sign
with either, so that commits are signed by the real git client."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Keys:
    root: Path
    gnupghome: Path
    ssh: dict[str, Path] = field(default_factory=dict)  # name -> private key file
    pgp: dict[str, str] = field(default_factory=dict)  # name -> fingerprint

    @property
    def allowed_signers(self) -> Path:
        return self.root / "allowed_signers"

    @property
    def keyring(self) -> Path:
        return self.root / "trusted.gpg"

    def ssh_fingerprint(self, name: str) -> str:
        out = subprocess.run(["ssh-keygen", "-l", "-f", str(self.ssh[name]) + ".pub"], capture_output=True, text=True, check=True).stdout
        return out.split()[1]

    def sign_args(self, name: str | None) -> list[str]:
        """git -c options that make `git commit -S` sign with key ``name``."""
        if name is None:
            return []
        if name in self.ssh:
            return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.ssh[name]}.pub"]
        return ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={self.pgp[name]}"]

    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.gnupghome)}

    def close(self) -> None:
        # The gpg-agent that signing started, in our own home only.
        subprocess.run(["gpgconf", "--homedir", str(self.gnupghome), "--kill", "gpg-agent"], capture_output=True, check=False)


def make_keys(root: Path, *, ssh: tuple[str, ...] = ("alice", "mallory"), pgp: tuple[str, ...] = ("carol", "dave"),
              trusted: tuple[str, ...] = ("alice", "carol")) -> Keys:
    """Keys named after people (``<name>@example.com``); ``trusted`` ones go into
    the allowed_signers file and the OpenPGP keyring."""
    root.mkdir(parents=True, exist_ok=True)
    home = root / "gnupg"
    home.mkdir(mode=0o700)
    keys = Keys(root, home)
    signers = []
    for name in ssh:
        path = root / f"{name}_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
        keys.ssh[name] = path
        if name in trusted:
            signers.append(f'{name}@example.com namespaces="git" {(root / f"{name}_ed25519.pub").read_text().strip()}')
    keys.allowed_signers.write_text("".join(line + "\n" for line in signers))
    gpg = ["gpg", "--batch", "--quiet", "--homedir", str(home)]
    for name in pgp:
        uid = f"{name.title()} <{name}@example.com>"
        subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"], check=True, capture_output=True)
        listing = subprocess.run([*gpg, "--with-colons", "--list-keys", uid], check=True, capture_output=True, text=True).stdout
        keys.pgp[name] = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    exported = [keys.pgp[n] for n in pgp if n in trusted]
    keyring = subprocess.run([*gpg, "--export", *exported], check=True, capture_output=True).stdout if exported else b""
    keys.keyring.write_bytes(keyring)
    return keys


def git(cwd: Path, *args: str, keys: Keys | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**(keys.env() if keys else os.environ), "GIT_AUTHOR_NAME": "Pusher", "GIT_AUTHOR_EMAIL": "p@example.com",
           "GIT_COMMITTER_NAME": "Pusher", "GIT_COMMITTER_EMAIL": "p@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check)


def signed_commit(work: Path, keys: Keys, signer: str | None, message: str) -> str:
    """Commit what is staged in ``work``, signed by ``signer`` (None: unsigned)."""
    git(work, *keys.sign_args(signer), "commit", "-q", *(["-S"] if signer else []), "--allow-empty", "-m", message, keys=keys)
    return git(work, "rev-parse", "HEAD").stdout.strip()
