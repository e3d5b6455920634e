#!/usr/bin/env bash
# Installs the Debian packages the live-stream tests need: GStreamer's RTSP server (driven by
# Debian's /usr/bin/python3 through python3-gi) and the plugins for a test pattern encoded with
# x264. Idempotent: exits at once when everything is already there.
set -euo pipefail

PACKAGES=(
  python3-gi
  gir1.2-gstreamer-1.0
  gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-rtsp
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-ugly
)

have_all() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
  /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null
}

if have_all; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-rtsp: apt-get not available; live-stream tests cannot run" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "setup-rtsp: not root and no sudo; live-stream tests cannot run" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
have_all
