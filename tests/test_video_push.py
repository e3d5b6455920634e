"""push.py: the x4 stream pushed to an RTSP/RTMP server, read back by FFmpeg's listen mode;
packets the muxer would refuse are repaired; a server that goes away is reconnected."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from fractions import Fraction

import media
import numpy as np
import pytest
from video_io import PUSH_LISTENER, free_port, wait_listening

from streamsr.api import upscale
from streamsr.errors import OutputError
from streamsr.video.push import PushSink

W, H = 64, 48
FPS = 25


@pytest.mark.parametrize("scheme", ["rtsp", "rtmp"])
def test_push_to_server_and_read_back(tmp_path, scheme):
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}/live/x4"
    result = tmp_path / "got.json"
    listener = subprocess.Popen([sys.executable, "-c", PUSH_LISTENER, url, str(result)])
    try:
        wait_listening(port)
        tb = Fraction(1, 90000)
        with PushSink(url, 4 * W, 4 * H, FPS) as push:
            for i in range(30):
                rgb = np.full((4 * H, 4 * W, 3), (200, 30, 30) if i < 15 else (30, 30, 200),
                              np.uint8)
                push.write(rgb, i * 3600 + (45000 if i >= 15 else 0), tb)  # 0.5 s gap
                time.sleep(1 / FPS)
        listener.wait(10)
    finally:
        listener.kill()
    got = json.loads(result.read_text())
    assert len(got) == 30 and push.frames_written == 30
    assert all((w, h) == (4 * W, 4 * H) for w, h, _, _ in got)
    assert got[5][2][0] > 150 and got[25][2][2] > 150
    times = [t for *_, t in got if t is not None]
    assert times[-1] - times[0] >= 29 / FPS + 0.45, "the gap survives the push"


def test_ten_bit_file_pushed_to_a_server(tmp_path):
    """A 10-bit input with a 10-bit pix_fmt pushed live: the push encodes from 8-bit RGB (the
    16-bit path is for file outputs), so this must work rather than fail on uint16 frames."""
    src = media.make_10bit_clip(tmp_path / "in10.mkv", n=6)
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live/x4.stream"  # a dot in the path: not taken for an image
    result = tmp_path / "got.json"
    listener = subprocess.Popen([sys.executable, "-c", PUSH_LISTENER, url, str(result)])
    try:
        wait_listening(port)
        stats = upscale(src, url, model=media.BicubicX4(), device="cpu", pix_fmt="yuv420p10le",
                        handle_signals=False)
        listener.wait(10)
    finally:
        listener.kill()
    got = json.loads(result.read_text())
    assert stats.frames == 6 and len(got) == 6
    assert all((w, h) == (4 * W, 4 * H) for w, h, _, _ in got)


def test_push_repairs_packets_the_muxer_would_refuse():
    """libx265 under load can hand out a first packet whose dts is after its pts (see
    sink.repair_timestamps); a push must send it with timestamps the muxer accepts, not fail."""
    import av

    from streamsr.video.encoder import TimestampRepair
    from streamsr.video.push import PushSink

    class Muxer:
        def __init__(self) -> None:
            self.sent: list[tuple[int, int]] = []

        def mux(self, packet) -> None:
            if self.sent and packet.dts <= self.sent[-1][1] or packet.pts < packet.dts:
                raise av.error.ValueError(22, "non-monotonic or pts < dts")  # as FFmpeg refuses
            self.sent.append((packet.pts, packet.dts))

    sink = PushSink.__new__(PushSink)  # no server: only the packet path is under test
    sink._container, sink._timestamps, sink._bytes = Muxer(), TimestampRepair(), 0
    truth = [(0, -2), (3, -1), (1, 0), (2, 1), (6, 2), (4, 3), (5, 4)]  # I P B B P B B
    stream = [(0, 8618642335881972446)] + truth[1:]  # garbage in the first dts (as x265 gave)
    for pts, dts in stream:
        packet = av.Packet(b"\0" * 10)
        packet.pts, packet.dts = pts, dts
        sink._send(packet)
    sink._send(None)
    assert sink._container.sent == truth  # every packet, in order, with its true timestamps
    assert sink._bytes == 70


def test_push_to_nobody_is_an_output_error():
    with pytest.raises(OutputError, match="cannot push"):
        PushSink(f"rtsp://127.0.0.1:{free_port()}/x4", 4 * W, 4 * H, FPS)


def test_push_reconnects_when_the_server_comes_back(tmp_path):
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live/x4"
    first = subprocess.Popen([sys.executable, "-c", PUSH_LISTENER, url, str(tmp_path / "first.json")])
    second = None
    try:
        wait_listening(port)
        tb = Fraction(1, 90000)
        with PushSink(url, 4 * W, 4 * H, FPS) as push:
            for i in range(100):
                if i == 20:  # the server dies ...
                    first.kill()
                    first.wait()
                if i == 35:  # ... and comes back
                    second = subprocess.Popen([sys.executable, "-c", PUSH_LISTENER, url,
                                               str(tmp_path / "second.json")])
                push.write(np.full((4 * H, 4 * W, 3), 120, np.uint8), i * 3600, tb)
                time.sleep(1 / FPS)
        second.wait(10)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    got = json.loads((tmp_path / "second.json").read_text())
    assert push.reconnects == 1 and push.frames_lost > 0
    assert push.frames_written + push.frames_lost == 100
    assert 0 < len(got) <= push.frames_written - 20, "the new server gets the frames after it came back"
