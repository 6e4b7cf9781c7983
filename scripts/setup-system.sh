#!/usr/bin/env bash
# Installs the Debian packages reconciler's local fleet needs, only those missing.
# Safe to run twice.  Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  docker.io          # dockerd per sandbox host, and the docker CLI for `docker system dial-stdio`
  docker-registry    # the local registry images are pushed to and pulled from by digest
  openssh-server     # sshd per sandbox host
  openssh-client     # ssh-keygen for identities and host keys, and `ssh-keygen -Y verify` for signed commits
  gpgv               # OpenPGP commit signatures checked against the agent's keyring
  gnupg              # gpg --dearmor for an armored keyring; the tests make throw-away keys with it
  busybox-static     # the demo images are built FROM scratch with it
  postgresql         # the database the deploys back up and migrate
  haproxy            # the traffic router per sandbox host (blue-green switches over its Runtime API)
  iproute2           # ip netns, veth, bridges
  iptables           # dockerd's NAT inside each namespace
  util-linux         # nsenter
  python3-venv
  git                # the hooks are driven by real git pushes in tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: installing ${missing[*]} needs root; run as root or install sudo" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps Debian's maintainer scripts from starting the stock
# daemons; the sandbox starts its own instances with its own configs.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
