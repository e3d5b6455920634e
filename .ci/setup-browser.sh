#!/usr/bin/env bash
# Installs Debian's Chromium for the headless-browser test of `streamsr serve`'s page
# (tests/test_serve_page.py). Idempotent: exits at once when a chromium is already there.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
bash "$(dirname "$0")/apt-install.sh" setup-browser "the serve page test cannot run" \
  chromium fonts-dejavu-core
command -v chromium >/dev/null 2>&1
