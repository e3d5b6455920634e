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

bash "$(dirname "$0")/apt-install.sh" setup-rtsp "live-stream tests cannot run" "${PACKAGES[@]}"
have_all
