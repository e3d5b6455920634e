#!/usr/bin/env bash
# Installs Debian's Chromium for the headless-browser test of `streamsr serve`'s page
# (tests/test_serve_page.py). Idempotent: exits at once when a chromium is already there.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-browser: apt-get not available; the serve page test cannot run" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "setup-browser: not root and no sudo; the serve page test cannot run" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
command -v chromium >/dev/null 2>&1
