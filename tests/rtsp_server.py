"""A small real RTSP server for the live-stream tests (GStreamer's gst-rtsp-server).

Run with Debian's /usr/bin/python3, which has python3-gi (see .ci/setup-rtsp.sh):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --width 64 --height 48 --fps 25

It serves a live test pattern encoded with x264 (tune=zerolatency) at rtsp://127.0.0.1:PORT/test,
over TCP and UDP, or only one of them with --protocols.
It prints "READY <port>" on stdout once listening and stops cleanly on SIGTERM/SIGINT. (Push
output is tested against FFmpeg's own RTSP listen mode instead of a RECORD mount here: the
GStreamer record pipeline returned corrupted first frames in our trials.)
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

PROTOCOLS = {"tcp": GstRtsp.RTSPLowerTrans.TCP,
             "udp": GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.UDP_MCAST,
             "all": GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP
             | GstRtsp.RTSPLowerTrans.UDP_MCAST}


def pattern_launch(args: argparse.Namespace) -> str:
    """The gst-launch description of the served live test pattern."""
    if args.color is not None:
        src = f"videotestsrc is-live=true pattern=solid-color foreground-color={args.color}"
    else:
        src = f"videotestsrc is-live=true pattern={args.pattern}"
    caps = f"video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1"
    enc = (f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.gop} "
           f"bitrate={args.bitrate}")
    return (f"( {src} ! {caps} ! {enc} ! video/x-h264,profile=constrained-baseline ! "
            f"rtph264pay name=pay0 pt=96 config-interval=1 )")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=10, help="keyframe interval in frames")
    parser.add_argument("--bitrate", type=int, default=256, help="kbit/s")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern name")
    parser.add_argument("--color", default=None,
                        help="serve a solid colour 0xAARRGGBB instead of the pattern")
    parser.add_argument("--protocols", choices=sorted(PROTOCOLS), default="all",
                        help="RTP transports the server accepts")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()

    play = GstRtspServer.RTSPMediaFactory()
    play.set_launch(pattern_launch(args))
    play.set_shared(True)
    play.set_latency(0)
    play.set_protocols(PROTOCOLS[args.protocols])
    mounts.add_factory("/test", play)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1

    def stop(*_: object) -> bool:
        loop.quit()
        return False

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, stop)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
