#!/usr/bin/env bash
# Installs Debian packages for a test set-up script: apt-get as root, or through `sudo -n`.
# Usage: apt-install.sh NAME WHAT-CANNOT-RUN PACKAGE...; exits 1 with one line naming NAME and
# what cannot run when there is no apt-get or no way to become root.
set -euo pipefail

name=$1 cannot=$2
shift 2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$name: apt-get not available; $cannot" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "$name: not root and no sudo; $cannot" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@"
