"""Who signed a commit: verification against a trust root on the agent's machine.

A commit's signature and the payload it signs are read with pygit2
(``Commit.gpg_signature``, libgit2's ``git_commit_extract_signature``).  The
check itself is done by the field's own tools, run with an argv list, never a
shell:

- SSH signatures exactly as ``git verify-commit`` checks them (git 2.39's
  gpg-interface.c): ``ssh-keygen -Y find-principals`` names the principals the
  ``allowed_signers`` file gives the signing key, then ``ssh-keygen -Y verify
  -n git -I PRINCIPAL`` checks the signature for one of them, both with
  ``-Overify-time`` set to the commit's committer time so that a key's
  ``valid-after``/``valid-before`` in the file are honoured, and ``-r`` with
  the revoked keys file when there is one (git's gpg.ssh.revocationFile);
- OpenPGP signatures with ``gpgv`` against one dedicated keyring (every key
  in it is trusted, no other keyring and no trust database is consulted),
  read from its machine-readable status lines.

The trust root never comes from the repository: its paths are given to the
agent (``Trust``: options, ``RECONCILER_ALLOWED_SIGNERS`` and
``RECONCILER_GPG_KEYRING``, or the repository's own git config, which a push
cannot change).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import pygit2

from reconciler.core.model import Policy
from reconciler.errors import BadSignature, StalledError, TransientError, UnsignedCommit

ENV_ALLOWED_SIGNERS = "RECONCILER_ALLOWED_SIGNERS"
ENV_GPG_KEYRING = "RECONCILER_GPG_KEYRING"
ENV_SSH_REVOKED = "RECONCILER_SSH_REVOKED"
# git config keys of the repository the agent serves (in its config file, not
# in any commit); git's own gpg.ssh.allowedSignersFile is honoured too.
CONFIG_ALLOWED_SIGNERS = ("reconciler.allowedSigners", "gpg.ssh.allowedSignersFile")
CONFIG_GPG_KEYRING = ("reconciler.gpgKeyring",)
CONFIG_SSH_REVOKED = ("reconciler.sshRevoked", "gpg.ssh.revocationFile")
# The agent's own principal in allowed_signers (the key behind its
# --signing-key): whose signature makes a notes commit the agent's record.
ENV_AGENT_PRINCIPAL = "RECONCILER_AGENT_PRINCIPAL"
CONFIG_AGENT_PRINCIPAL = ("reconciler.agentPrincipal",)

_SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
_PGP_ARMOR = b"-----BEGIN PGP SIGNATURE-----"
_KEYRING_ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
_SSH_GOOD = re.compile(r'^Good "git" signature for (?P<principal>.+) with (?P<type>\S+) key (?P<fpr>SHA256:\S+)$', re.M)
_TIMEOUT = 30.0


@dataclass(frozen=True)
class Trust:
    """Where the trusted keys are, on the agent's machine."""

    allowed_signers: Path | None = None  # OpenSSH allowed_signers (ssh-keygen(1) ALLOWED SIGNERS)
    gpg_keyring: Path | None = None  # an OpenPGP keyring: `gpg --export` output, binary or armored
    ssh_revoked: Path | None = None  # revoked SSH keys (ssh-keygen -Y verify -r), as gpg.ssh.revocationFile
    agent_principal: str | None = None  # the agent's principal in allowed_signers (its notes commits' signer)

    @classmethod
    def from_environment(cls, repo: pygit2.Repository | None = None, environ: Mapping[str, str] = os.environ,
                         allowed_signers: str | None = None, gpg_keyring: str | None = None,
                         ssh_revoked: str | None = None, agent_principal: str | None = None) -> "Trust":
        """Explicit paths (an agent option), else the environment variables,
        else the repository's git config."""

        def value(explicit: str | None, variable: str, keys: tuple[str, ...]) -> str | None:
            if explicit:
                return explicit
            if environ.get(variable):
                return environ[variable]
            for key in keys:
                try:
                    found = repo.config[key] if repo is not None else None
                except KeyError:
                    found = None
                if found:
                    return found
            return None

        def pick(explicit: str | None, variable: str, keys: tuple[str, ...]) -> Path | None:
            found = value(explicit, variable, keys)
            return Path(found).expanduser() if found else None

        return cls(pick(allowed_signers, ENV_ALLOWED_SIGNERS, CONFIG_ALLOWED_SIGNERS),
                   pick(gpg_keyring, ENV_GPG_KEYRING, CONFIG_GPG_KEYRING),
                   pick(ssh_revoked, ENV_SSH_REVOKED, CONFIG_SSH_REVOKED),
                   value(agent_principal, ENV_AGENT_PRINCIPAL, CONFIG_AGENT_PRINCIPAL))


@dataclass(frozen=True)
class Signer:
    """Who signed: what an attempt records and ``history`` shows."""

    kind: Literal["ssh", "openpgp"]
    fingerprint: str  # SHA256:... of the SSH key; the OpenPGP primary key's fingerprint
    principal: str  # the allowed_signers principal; the OpenPGP user id

    def __str__(self) -> str:
        return f"{self.principal} ({self.kind} {self.fingerprint})"


def signature_required(policy: Policy, previous: Policy | None = None) -> bool:
    """A commit needs a signature when its own policy asks for one, or when
    the policy it replaces did: turning the requirement off takes a signed
    commit too."""
    return policy.require_signed or bool(previous and previous.require_signed)


def verify_commit(repo: pygit2.Repository, commit: str, policy: Policy, trust: Trust, *,
                  previous: Policy | None = None, environment: str = "") -> Signer | None:
    """The verified signer of ``commit``.

    When ``signature_required(policy, previous)``: raises UnsignedCommit or
    BadSignature (stalled: a human must push a signed commit or fix the trust
    root).  Otherwise a signature is still verified when there is one and a
    trust root to check it against, so that history can show who signed; a
    missing or failing one then gives None."""
    required = signature_required(policy, previous)
    where = f"{environment}: " if environment else ""
    try:
        obj = repo.revparse_single(commit).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise StalledError(f"{where}{commit}: not a commit: {exc}") from exc
    short = str(obj.id)[:12]
    signature, payload = obj.gpg_signature
    if signature is None:
        if required:
            raise UnsignedCommit(f"{where}commit {short} is not signed, and policy.require_signed asks for a signature "
                                 "(git commit -S with a key the agent trusts)")
        return None
    try:
        return _verify(signature, payload, obj.commit_time, trust, f"{where}commit {short}")
    except BadSignature:
        if required:
            raise
        return None


def verify_signature(signature: bytes, payload: bytes, when: int, trust: Trust, what: str) -> Signer:
    """The verified signer of ``payload`` (a detached SSH or OpenPGP
    signature in git's namespace), or BadSignature."""
    return _verify(signature, payload, when, trust, what)


def _verify(signature: bytes, payload: bytes, when: int, trust: Trust, what: str) -> Signer:
    head = signature.lstrip()
    if head.startswith(_SSH_ARMOR):
        return _verify_ssh(signature, payload, when, trust, what)
    if head.startswith(_PGP_ARMOR):
        return _verify_openpgp(signature, payload, trust, what)
    raise BadSignature(f"{what}: the signature is neither SSH nor OpenPGP (x509 signatures are not supported)")


def _run(argv: list[str], stdin: bytes, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        package = "openssh-client" if argv[0] == "ssh-keygen" else "gpgv" if argv[0] == "gpgv" else "gnupg"
        raise StalledError(f"{what}: {argv[0]} is not installed (Debian package {package})") from exc
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"{what}: {argv[0]} did not answer within {_TIMEOUT:.0f} s") from exc


def _readable(path: Path | None, what: str, kind: str, variable: str) -> Path:
    if path is None:
        raise BadSignature(f"{what} carries an {kind} signature, but no trusted {kind} keys are configured on the agent's machine "
                           f"(set {variable})")
    if not path.is_file():
        raise BadSignature(f"{what}: the trusted keys file {path} does not exist")
    return path


def _verify_ssh(signature: bytes, payload: bytes, when: int, trust: Trust, what: str) -> Signer:
    signers = _readable(trust.allowed_signers, what, "SSH", ENV_ALLOWED_SIGNERS)
    # As git does: the verifier's local time of the committer date.
    verify_time = "-Overify-time=" + time.strftime("%Y%m%d%H%M%S", time.localtime(when))
    with tempfile.TemporaryDirectory(prefix="reconciler-sig-") as tmp:
        sig_file = Path(tmp) / "signature"
        sig_file.write_bytes(signature)
        found = _run(["ssh-keygen", "-Y", "find-principals", "-f", str(signers), "-s", str(sig_file), verify_time], b"", what)
        principals = [p for p in found.stdout.decode("utf-8", "replace").splitlines() if p.strip()]
        if found.returncode != 0 or not principals:
            # Tell a good signature by an unknown key from a broken one, as git does.
            intact = _run(["ssh-keygen", "-Y", "check-novalidate", "-n", "git", "-s", str(sig_file), verify_time], payload, what)
            if intact.returncode == 0:
                key = _SSH_FPR.search(intact.stdout.decode("utf-8", "replace"))
                raise BadSignature(f"{what}: signed by an SSH key the agent does not trust ({key.group(0) if key else 'unknown key'}): "
                                   f"no principal in {signers} has it")
            raise BadSignature(f"{what}: the SSH signature is not valid: {_last_line(found.stderr or intact.stderr)}")
        if trust.ssh_revoked is not None and not trust.ssh_revoked.is_file():
            raise BadSignature(f"{what}: the revoked SSH keys file {trust.ssh_revoked} does not exist")
        revoked = ["-r", str(trust.ssh_revoked)] if trust.ssh_revoked is not None else []
        failures = []
        for principal in principals:
            checked = _run(["ssh-keygen", "-Y", "verify", "-n", "git", "-f", str(signers), "-I", principal, "-s", str(sig_file),
                            *revoked, verify_time], payload, what)
            good = _SSH_GOOD.search(checked.stdout.decode("utf-8", "replace"))
            if checked.returncode == 0 and good:
                return Signer("ssh", good.group("fpr"), good.group("principal"))
            failures.append(_last_line(checked.stderr or checked.stdout))
        raise BadSignature(f"{what}: the SSH signature does not verify for {', '.join(principals)}: {'; '.join(failures)}")


_SSH_FPR = re.compile(r"SHA256:[A-Za-z0-9+/=]+")


def _verify_openpgp(signature: bytes, payload: bytes, trust: Trust, what: str) -> Signer:
    keyring = trusted = _readable(trust.gpg_keyring, what, "OpenPGP", ENV_GPG_KEYRING)
    with tempfile.TemporaryDirectory(prefix="reconciler-sig-") as tmp:
        # An empty home: gpgv reads no keyring, option file or trust database
        # but the one named here.
        home = Path(tmp) / "gnupg"
        home.mkdir(mode=0o700)
        if keyring.read_bytes()[:64].lstrip().startswith(_KEYRING_ARMOR):
            # `gpg --export --armor` output: gpgv reads binary keyrings only.
            binary = Path(tmp) / "keyring.gpg"
            dearmored = _run(["gpg", "--batch", "--homedir", str(home), "--dearmor", "--output", str(binary), str(keyring)], b"", what)
            if dearmored.returncode != 0:
                raise BadSignature(f"{what}: the trusted keyring {trusted} cannot be read: {_last_line(dearmored.stderr)}")
            keyring = binary
        sig_file = Path(tmp) / "signature"
        sig_file.write_bytes(signature)
        checked = _run(["gpgv", "--homedir", str(home), "--keyring", str(keyring.resolve()), "--status-fd", "1", str(sig_file), "-"],
                       payload, what)
    status = [line.split()[1:] for line in checked.stdout.decode("utf-8", "replace").splitlines() if line.startswith("[GNUPG:] ")]
    words = {fields[0]: fields[1:] for fields in status if fields}
    if checked.returncode == 0 and "GOODSIG" in words and "VALIDSIG" in words and sum(f[0] == "NEWSIG" for f in status if f) == 1:
        valid = words["VALIDSIG"]
        primary = valid[9] if len(valid) > 9 else valid[0]
        return Signer("openpgp", primary, " ".join(words["GOODSIG"][1:]))
    if "NO_PUBKEY" in words:
        raise BadSignature(f"{what}: signed by an OpenPGP key the agent does not trust ({words['NO_PUBKEY'][0]}): not in {trusted}")
    for word, reason in (("BADSIG", "the OpenPGP signature does not match the commit"), ("EXPKEYSIG", "signed by an expired OpenPGP key"),
                         ("REVKEYSIG", "signed by a revoked OpenPGP key"), ("EXPSIG", "the OpenPGP signature has expired")):
        if word in words:
            raise BadSignature(f"{what}: {reason} ({' '.join(words[word])})")
    raise BadSignature(f"{what}: the OpenPGP signature does not verify: {_last_line(checked.stderr)}")


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"
