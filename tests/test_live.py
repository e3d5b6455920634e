"""Live streams against a real RTSP server on 127.0.0.1 (GStreamer's gst-rtsp-server).

The server is tests/rtsp_server.py run with Debian's /usr/bin/python3 (python3-gi); the packages
come from .ci/setup-rtsp.sh, which the fixture runs when they are missing. Push output is read
back through FFmpeg's own RTSP listen mode in a separate process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import media
import numpy as np
import pytest
from click.testing import CliRunner
from media import assert_one_line, cli
from video_io import PUSH_LISTENER, free_port, wait_listening

from streamsr.api import upscale
from streamsr.cli import main
from streamsr.errors import ConfigError, Interrupted, SourceError
from streamsr.options import find_preset, load_preset
from streamsr.video.live import (
    DropQueue,
    LiveOptions,
    LiveSource,
    ffmpeg_options,
    is_network_uri,
)
from streamsr.video.segments import is_push_url, live_output_path

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("rtsp_server.py")
SETUP = ROOT / ".ci" / "setup-rtsp.sh"
SYSTEM_PYTHON = "/usr/bin/python3"
FPS = 25
W, H = 64, 48
RED, BLUE = "0xffff0000", "0xff0000ff"


def _gst_ready() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = ("import gi; gi.require_version('Gst', '1.0'); "
             "gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


def no_rtsp_server(reason: str) -> None:
    """Skip with `reason`, or fail where the server is required: .ci/run sets
    STREAMSR_REQUIRE_RTSP=1, so CI cannot pass with the live tests silently skipped."""
    if os.environ.get("STREAMSR_REQUIRE_RTSP") == "1":
        pytest.fail(f"STREAMSR_REQUIRE_RTSP=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def gst() -> None:
    """GStreamer's RTSP server is installed (installing it if we can), else skip (or fail)."""
    if _gst_ready():
        return
    try:
        proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        no_rtsp_server(f"RTSP test server not installable here: {exc}")
    if proc.returncode != 0 or not _gst_ready():
        no_rtsp_server("RTSP test server (GStreamer gst-rtsp-server, python3-gi) not installable "
                       f"here: {proc.stderr.strip()[-300:]}")


class RtspServer:
    """One tests/rtsp_server.py process that can be stopped and started again on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self, color: str | None = None, protocols: str = "all") -> None:
        args = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--width", str(W),
                "--height", str(H), "--fps", str(FPS), "--protocols", protocols]
        if color:
            args += ["--color", color]
        for _ in range(50):  # the port may linger for a moment after a stop
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                return
            self.proc.wait(5)
            time.sleep(0.1)
        raise RuntimeError(f"RTSP server did not start: {self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def rtsp(gst):
    server = RtspServer()
    yield server
    server.stop()


def fast_options(**kw) -> LiveOptions:
    """Short timeouts and backoff so failures show within a second or two."""
    base = dict(open_timeout=3.0, read_timeout=1.0, backoff_initial=0.1, backoff_max=0.5,
                reconnect_max=20)
    base.update(kw)
    return LiveOptions(**base)


# -- pure helpers ------------------------------------------------------------------------


def test_network_uri_detection_and_ffmpeg_options():
    assert is_network_uri("rtsp://cam/stream") and is_network_uri("rtmp://x/app")
    assert is_network_uri("https://x/live.m3u8") and not is_network_uri("clip.mp4")
    assert not is_network_uri("/data/rtsp_clip.mkv")
    o = ffmpeg_options("rtsp://cam/s", LiveOptions(rtsp_transport="udp", read_timeout=2.5))
    assert o["rtsp_transport"] == "udp" and o["timeout"] == "2500000"
    assert o["fflags"] == "nobuffer"
    r = ffmpeg_options("rtmp://srv/app", LiveOptions())
    assert "timeout" not in r, "rtmp's timeout option means listen mode"
    assert ffmpeg_options("rtsp://c/s", LiveOptions(options={"timeout": "1"}))["timeout"] == "1"
    assert is_push_url("rtmp://srv/app/key") and not is_push_url("out.mkv")
    assert live_output_path("cam") == "cam.mkv" and live_output_path("cam.mp4") == "cam.mp4"


def test_missing_rtsp_server_fails_where_required(monkeypatch):
    monkeypatch.delenv("STREAMSR_REQUIRE_RTSP", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        no_rtsp_server("no server")
    monkeypatch.setenv("STREAMSR_REQUIRE_RTSP", "1")
    with pytest.raises(pytest.fail.Exception, match="STREAMSR_REQUIRE_RTSP=1 but no server"):
        no_rtsp_server("no server")


@pytest.mark.parametrize("bad", [dict(rtsp_transport="http"), dict(drop="newest"),
                                 dict(reconnect_max=-1), dict(max_latency=0.0)])
def test_bad_live_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        LiveOptions(**bad).validate()


@pytest.mark.parametrize("bad, words", [
    (dict(duration=float("nan")), "--duration must be a finite number"),
    (dict(duration=0.0), "--duration must be more than 0"),
    (dict(frames=0), "--frames must be a whole number"),
])
def test_impossible_duration_or_frames_are_refused_before_connecting(bad, words):
    with pytest.raises(ConfigError, match=words):  # no server: the check comes first
        LiveSource(f"rtsp://127.0.0.1:{free_port()}/none", fast_options(), **bad)


# -- sources against the real server -------------------------------------------------------


def test_reads_n_frames_with_source_clock(rtsp):
    rtsp.start()
    n = 20
    with LiveSource(rtsp.url, fast_options(drop="none"), frames=n) as src:
        assert (src.info.width, src.info.height, src.info.is_live) == (W, H, True)
        assert src.info.fps == FPS
        frames = list(src)
    assert len(frames) == n
    assert [f.index for f in frames] == list(range(n))
    assert all(f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8 for f in frames)
    steps = {round((b.pts - a.pts) * frames[0].time_base, 4) for a, b in zip(frames, frames[1:], strict=False)}
    assert steps == {Fraction(1, FPS)}, "pts follow the server's 25 fps clock"
    assert src.stats.frames_decoded == n and src.stats.dropped == 0


@pytest.mark.parametrize("duration, n", [(1.0, 25), (0.4, 10)])
def test_duration_keeps_the_frames_before_it(rtsp, tmp_path, duration, n):
    """--duration 1.0 on a 25 fps feed: the frames at 0, 1/25, ... 24/25 s, as for a file.
    (0.4 as a float is a hair above 2/5: the frame at exactly 0.4 s must still be left out.)"""
    rtsp.start()
    stats = upscale(rtsp.url, tmp_path / "cam.mkv", model=media.BicubicX4(), duration=duration,
                    live_options=fast_options(drop="none"), **LIVE_FAST)
    frames, times = _decode(tmp_path / "cam.mkv")
    assert len(frames) == stats.frames == n and stats.live["frames_decoded"] == n
    assert np.allclose(times, np.arange(n) / FPS, atol=0.002) and times[-1] < duration


def test_silent_source_times_out_with_source_error():
    with socket.socket() as mute:  # accepts TCP connections, never says a word
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        url = f"rtsp://127.0.0.1:{mute.getsockname()[1]}/cam"
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="after 2 attempt") as info:
            LiveSource(url, fast_options(open_timeout=0.7, reconnect_max=1))
        assert time.monotonic() - t0 < 20  # gave up, did not hang
    assert re.search(r"no answer within 0\.[7-9] s", str(info.value)), str(info.value)
    assert "Invalid data" not in str(info.value)


def test_closed_port_gives_up_after_reconnect_max():
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    with pytest.raises(SourceError, match="cannot open after 3 attempt"):
        LiveSource(url, fast_options(reconnect_max=2))


def test_which_open_errors_are_permanent():
    """A wrong URL or credentials fail at once; a busy camera (RTSP 453/454, HTTP 429) is retried."""
    import errno

    import av

    from streamsr.video.live import _permanent

    def err(cls, code=0, text="x"):
        return cls(code, text)

    for cls in (av.error.HTTPBadRequestError, av.error.HTTPUnauthorizedError,
                av.error.HTTPForbiddenError, av.error.HTTPNotFoundError,
                av.error.ProtocolNotFoundError):
        assert _permanent(err(cls)), cls
    assert _permanent(OSError(errno.EPROTONOSUPPORT, "461 Unsupported transport"))
    for cls in (av.error.HTTPOtherClientError, av.error.HTTPTooManyRequestsError,
                av.error.HTTPServerError, av.error.InvalidDataError):
        assert not _permanent(err(cls)), cls
    assert not _permanent(TimeoutError("no answer"))


def test_unknown_protocol_fails_at_once():
    """srt:// is not in the FFmpeg that PyAV bundles: no retry can help, so no retries."""
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="Protocol not found") as info:
        LiveSource("srt://127.0.0.1:9/cam", fast_options(reconnect_max=20))
    assert time.monotonic() - t0 < 1.0 and "attempt" not in str(info.value)


def test_unknown_rtsp_mount_fails_at_once(rtsp):
    rtsp.start()
    url = rtsp.url.replace("/test", "/no-such-mount")
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="404 Not Found") as info:
        LiveSource(url, fast_options(reconnect_max=20))
    assert time.monotonic() - t0 < 1.5 and "attempt" not in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_unknown_protocol_is_one_line_exit_2(tmp_path, stand_in_model):
    t0 = time.monotonic()
    result = CliRunner().invoke(main, ["upscale", "srt://127.0.0.1:9/cam",
                                       str(tmp_path / "out.mkv"), "--device", "cpu", "-q"])
    assert result.exit_code == 2 and time.monotonic() - t0 < 5
    assert result.output.strip().count("\n") == 0 and "Protocol not found" in result.output
    assert not (tmp_path / "out.mkv").exists()


def test_rtsp_over_udp_transport(rtsp, tmp_path, stand_in_model):
    """The server accepts UDP only, so TCP cannot work and --rtsp-transport udp must."""
    rtsp.start(color=RED, protocols="udp")
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="refuses RTSP over tcp: try --rtsp-transport udp"):
        LiveSource(rtsp.url, fast_options(rtsp_transport="tcp", reconnect_max=20))
    assert time.monotonic() - t0 < 1.5, "an unsupported transport is not retried"
    with LiveSource(rtsp.url, fast_options(rtsp_transport="udp", drop="none"), frames=20) as src:
        frames = list(src)
    assert len(frames) == 20 and {_colour(f.rgb) for f in frames} == {"red"}
    steps = {round((b.pts - a.pts) * b.time_base, 4) for a, b in zip(frames, frames[1:], strict=False)}
    assert steps == {Fraction(1, FPS)}
    out = tmp_path / "udp.mkv"
    result = CliRunner().invoke(main, ["upscale", rtsp.url, str(out), "--rtsp-transport", "udp",
                                       "--device", "cpu", "--batch", "2", "--frames", "10",
                                       "--encoder-preset", "ultrafast", "--timeout", "3", "-q"])
    assert result.exit_code == 0, result.output
    got, _ = _decode(out)
    assert len(got) == 10 and {_colour(f) for f in got} == {"red"}


_UDP_SENDER = """
import sys, time
import av, numpy as np
url, frames = sys.argv[1], np.load(sys.argv[2])
with av.open(url, "w", format="mpegts") as out:
    s = out.add_stream("libx264", rate=25, options={"tune": "zerolatency", "preset": "ultrafast",
                                                    "g": "5", "bf": "0"})
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    t0 = time.monotonic()
    for i, rgb in enumerate(frames):  # paced like a camera: 25 fps
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        f.pts = i
        for p in s.encode(f):
            out.mux(p)
        time.sleep(max(0.0, t0 + (i + 1) / 25 - time.monotonic()))
"""


def test_udp_mpegts_input(tmp_path):
    """A camera-like sender pushes MPEG-TS to udp://127.0.0.1:PORT; streamsr reads it live."""
    n_sent, n = 150, 20
    np.save(tmp_path / "frames.npy", np.stack([media.index_frame(i, W, H) for i in range(n_sent)]))
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    sender = subprocess.Popen([sys.executable, "-c", _UDP_SENDER, url + "?pkt_size=1316",
                               str(tmp_path / "frames.npy")])
    try:
        stats = upscale(url, tmp_path / "udp", model=media.BicubicX4(), frames=n,
                        live_options=fast_options(drop="none"), **LIVE_FAST)
    finally:
        sender.kill()
        sender.wait()
    frames, times = _decode(tmp_path / "udp.mkv")  # live default: MKV
    index = [media.read_index(f) for f in frames]
    assert len(frames) == stats.frames == n and frames[0].shape == (4 * H, 4 * W, 3)
    assert stats.live is not None and stats.dropped == 0
    assert index == list(range(index[0], index[0] + n)), "consecutive frames of the sender"
    assert np.allclose(np.diff(times), 1 / FPS, atol=0.002), "the sender's 25 fps clock"


_UDP_AV_SENDER = """
import sys, time
import av, numpy as np
url, seconds = sys.argv[1], float(sys.argv[2])
with av.open(url, "w", format="mpegts") as out:
    v = out.add_stream("libx264", rate=25, options={"tune": "zerolatency", "preset": "ultrafast",
                                                    "g": "5", "bf": "0"})
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    a = out.add_stream("mp2", rate=48000)
    a.layout = "stereo"
    t0, done = time.monotonic(), 0
    for i in range(int(seconds * 25)):  # paced like a camera: 25 fps, 1920 samples a frame
        f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")
        f.pts = i
        for p in v.encode(f):
            out.mux(p)
        s = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 1920), np.int16), format="s16",
                                       layout="stereo")
        s.sample_rate, s.pts = 48000, done
        done += 1920
        for p in a.encode(s):
            out.mux(p)
        time.sleep(max(0.0, t0 + (i + 1) / 25 - time.monotonic()))
"""


def test_live_audio_is_not_carried_and_says_so_once(tmp_path, caplog):
    """A camera feed with audio: live mode writes video only, and one warning says so."""
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    sender = subprocess.Popen([sys.executable, "-c", _UDP_AV_SENDER, url + "?pkt_size=1316", "8"])
    try:
        with caplog.at_level(logging.WARNING, logger="streamsr"):
            stats = upscale(url, tmp_path / "cam", model=media.BicubicX4(), frames=10,
                            live_options=fast_options(drop="none"), **LIVE_FAST)
    finally:
        sender.kill()
        sender.wait()
    said = [r.getMessage() for r in caplog.records if "audio" in r.getMessage()]
    assert len(said) == 1 and "mp2" in said[0] and "no audio" in said[0], said
    with av.open(str(tmp_path / "cam.mkv")) as c:
        assert not c.streams.audio and stats.frames == 10


def test_no_live_reads_a_url_like_a_file(rtsp, tmp_path):
    rtsp.start(color=BLUE)
    stats = upscale(rtsp.url, tmp_path / "plain.mkv", model=media.BicubicX4(), live=False,
                    frames=10, **LIVE_FAST)
    frames, _ = _decode(tmp_path / "plain.mkv")
    assert stats.live is None and stats.frames == len(frames) == 10
    assert {_colour(f) for f in frames} == {"blue"}


# -- the whole pipeline on a live source ----------------------------------------------------


class SlowX4(media.BicubicX4):
    """The bicubic stand-in at a fixed slow speed, like a big model on a small GPU."""

    def __init__(self, seconds_per_frame: float) -> None:
        super().__init__()
        self.seconds_per_frame = seconds_per_frame
        self.starts: list[tuple[float, tuple[int, ...]]] = []

    def forward(self, x):
        self.starts.append((time.monotonic(), tuple(x.shape)))  # when inference began, on what
        time.sleep(self.seconds_per_frame * x.shape[0])
        return super().forward(x)


LIVE_FAST = dict(device="cpu", encoder_preset="ultrafast", batch=2)


def _decode(path) -> tuple[list[np.ndarray], list[float]]:
    frames, pts, tb = media.decode_all(path)
    return frames, [float(p * tb) for p in pts]


def _colour(rgb: np.ndarray) -> str:
    r, g, b = rgb.reshape(-1, 3).mean(0)
    return "red" if r > 180 and b < 60 else "blue" if b > 180 and r < 60 else "other"


def test_live_upscale_writes_n_x4_frames_to_mkv(rtsp, tmp_path):
    rtsp.start(color=RED)
    stats = upscale(rtsp.url, tmp_path / "cam", model=media.BicubicX4(), frames=20,
                    live_options=fast_options(drop="none"), **LIVE_FAST)
    out = tmp_path / "cam.mkv"  # live default container
    assert stats.output == str(out) and stats.frames == 20 and stats.dropped == 0
    frames, times = _decode(out)
    assert len(frames) == 20 and frames[0].shape == (4 * H, 4 * W, 3)
    assert {_colour(f) for f in frames} == {"red"}
    assert np.allclose(np.diff(times), 1 / FPS, atol=0.002), "output follows the 25 fps source clock"
    assert stats.live["frames_decoded"] == 20 and stats.live["reconnects"] == 0


def test_live_upscale_survives_server_restart(rtsp, tmp_path):
    rtsp.start(color=RED)
    outage = 0.8
    lines: list[tuple[float, str]] = []
    clock: dict[str, float] = {}

    def bounce() -> None:
        time.sleep(1.0)
        clock["stop"] = time.monotonic()
        rtsp.stop()
        clock["stopped"] = time.monotonic()
        time.sleep(outage)
        rtsp.start(color=BLUE)
        clock["up"] = time.monotonic()

    bouncer = threading.Thread(target=bounce)
    bouncer.start()
    try:
        stats = upscale(rtsp.url, tmp_path / "cam.mkv", model=media.BicubicX4(), frames=50,
                        live_options=fast_options(drop="none"),
                        status=lambda line: lines.append((time.monotonic(), line)),
                        status_interval=0.2, **LIVE_FAST)
    finally:
        bouncer.join()
    frames, times = _decode(tmp_path / "cam.mkv")
    colours = [_colour(f) for f in frames]
    assert len(frames) == stats.frames == 50
    n_red = colours.count("red")
    assert 0 < n_red < 50 and colours == ["red"] * n_red + ["blue"] * (50 - n_red), \
        "frames of both sessions, in order"
    assert times[n_red] - times[n_red - 1] >= outage, "the outage is a gap in the timestamps"
    assert stats.live["reconnects"] == 1 and stats.live["downtime_s"] >= 0.7
    assert "1 reconnects" in stats.summary()
    assert any("reconnects 1" in line for _, line in lines), lines
    # While the server is gone no frame arrives, yet the status keeps coming and says so.
    down = [(t, line) for t, line in lines if clock["stopped"] < t < clock["up"]]
    assert down and all(" DOWN for " in line for _, line in down), lines
    for t, line in down:
        said = float(line.split("DOWN for ")[1].split(" s,")[0])
        assert abs(said - (t - clock["stop"])) < 0.3, (line, t - clock["stop"])
    attempts = [int(line.split("attempt ")[1].split(",")[0]) for _, line in down]
    assert attempts == sorted(attempts) and attempts[0] >= 1


def test_frozen_feed_downtime_counts_from_the_last_frame(rtsp):
    """SIGSTOP freezes the server without closing anything: streamsr notices only after
    read_timeout (1 s) of silence, but the outage it reports starts with the last frame."""
    rtsp.start()
    clock: dict[str, float] = {}

    def freeze() -> None:
        rtsp.proc.send_signal(signal.SIGSTOP)
        clock["stop"] = time.monotonic()
        time.sleep(2.5)
        clock["cont"] = time.monotonic()
        rtsp.proc.send_signal(signal.SIGCONT)

    freezer = threading.Thread(target=freeze)
    frames = []
    try:
        with LiveSource(rtsp.url, fast_options(drop="none", read_timeout=1.0), frames=40) as src:
            for frame in src:
                frames.append(frame)
                if len(frames) == 10:  # frames are flowing: freeze the server
                    freezer.start()
    finally:
        if freezer.is_alive():
            freezer.join()
    frozen = clock["cont"] - clock["stop"]
    assert len(frames) == 40 and src.stats.reconnects == 1
    start, end = src.stats.outages[0]
    assert start <= clock["stop"] + 0.1 and end >= clock["cont"], (clock, start, end)
    assert src.stats.downtime >= frozen - 0.1, (src.stats.downtime, frozen)
    gap = max(float((b.pts - a.pts) * b.time_base) for a, b in zip(frames, frames[1:], strict=False))
    assert gap >= frozen - 0.1, "the output clock shows the freeze as a gap"


def test_slow_model_drops_frames_and_keeps_latency_bounded(rtsp, tmp_path, monkeypatch):
    """Ages are measured here, not taken from the source's own counters: the time each frame
    entered the live queue (keyed by its 1/25 s slot, which the output file keeps) against the
    time the slow model began the forward pass that upscaled it."""
    rtsp.start()
    n, max_latency = 40, 0.3
    arrived: dict[int, float] = {}  # 1/25 s slot of the output clock -> when it was queued
    queue_put = DropQueue.put

    def put(self, item) -> None:
        arrived[round(item.pts * item.time_base * FPS)] = time.monotonic()
        queue_put(self, item)

    monkeypatch.setattr(DropQueue, "put", put)
    model = SlowX4(0.1)  # 10 fps against a 25 fps camera; unbounded, ages would reach ~0.7 s
    stats = upscale(rtsp.url, tmp_path / "cam.mkv", model=model, frames=n,
                    live_options=fast_options(drop="oldest", queue_size=4,
                                              max_latency=max_latency),
                    device="cpu", encoder_preset="ultrafast", batch=1)
    frames, times = _decode(tmp_path / "cam.mkv")
    assert stats.live["frames_decoded"] == n and sorted(arrived) == list(range(n)), \
        "one unbroken session: the source queued slots 0 .. n-1"
    slots = [round(t * FPS) for t in times]
    assert np.allclose(times, np.array(slots) / FPS, atol=0.002) and slots == sorted(set(slots))
    missing = set(range(n)) - set(slots)
    assert stats.dropped > 0 and len(missing) == stats.dropped == n - len(frames) == n - stats.frames, \
        "the drop counter is exactly the 1/25 s slots missing from the output"
    forwards = [t for t, shape in model.starts if shape[-2:] == (H, W)]  # not the 32x32 probe
    assert len(forwards) == len(frames), "batch 1: one forward pass per written frame, in order"
    ages = [start - arrived[slot] for start, slot in zip(forwards, slots, strict=True)]
    assert max(ages) <= max_latency + 0.1, f"oldest frame at inference: {max(ages):.3f} s"


def test_live_segments_are_each_playable(rtsp, tmp_path):
    rtsp.start()
    stats = upscale(rtsp.url, str(tmp_path / "seg" / "cam_%H%M%S.mkv"), model=media.BicubicX4(),
                    frames=25, segment_time=0.42, live_options=fast_options(drop="none"),
                    **LIVE_FAST)
    files = sorted((tmp_path / "seg").glob("cam_*.mkv"))
    counts = [len(_decode(f)[0]) for f in files]
    assert len(files) == 3 and sum(counts) == stats.frames == 25
    assert counts == [11, 11, 3], "0.42 s of a 25 fps stream per segment, in name order"
    assert all(_decode(f)[1][0] == 0.0 for f in files), "each segment starts at time zero"


def test_live_push_to_rtsp_and_read_back(rtsp, tmp_path):
    rtsp.start(color=BLUE)
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/x4"
    result = tmp_path / "got.json"
    listener = subprocess.Popen([sys.executable, "-c", PUSH_LISTENER, url, str(result)])
    try:
        wait_listening(port)
        stats = upscale(rtsp.url, url, model=media.BicubicX4(), frames=20,
                        live_options=fast_options(drop="none"), **LIVE_FAST)
        listener.wait(10)
    finally:
        listener.kill()
    got = json.loads(result.read_text())
    assert stats.output == url and len(got) == stats.frames == 20
    assert all((w, h) == (4 * W, 4 * H) and rgb[2] > 180 for w, h, rgb, _ in got)


@pytest.fixture
def stand_in_model(monkeypatch):
    """The CLI loads the bicubic stand-in instead of a real model (fast on a loaded CPU)."""
    monkeypatch.setattr("streamsr.jobs.stream.resolve_model",
                        lambda model, device="cpu": media.BicubicX4())


def test_cli_silent_source_fails_with_one_line(tmp_path, stand_in_model):
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        url = f"rtsp://127.0.0.1:{mute.getsockname()[1]}/cam"
        result = CliRunner().invoke(main, [
            "upscale", url, str(tmp_path / "out.mkv"), "--device", "cpu",
            "--timeout", "0.7", "--reconnect-max", "1", "-q"])
    assert result.exit_code == 2
    assert "cannot open after 2 attempt" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.mkv").exists()


def test_rtsp_live_preset_loads():
    assert find_preset("rtsp-live").parent.name == "pipelines"
    values = load_preset("rtsp-live")
    expected = {"model": "lite", "live": True, "rtsp_transport": "tcp", "drop": "oldest",
                "max_latency": 1.0, "reconnect_max": 0, "open_timeout": 10, "read_timeout": 10,
                "status_interval": 10, "crf": 23, "encoder_preset": "veryfast",
                "encoder_options": {"tune": "zerolatency"}}
    assert {k: values.get(k) for k in expected} == expected


def test_cli_live_options_reach_the_pipeline(rtsp, tmp_path, stand_in_model, monkeypatch):
    """The rtsp-live preset's values reach the pipeline unless the command line overrides them."""
    import streamsr.jobs.stream as pipeline

    seen: dict[str, object] = {}

    def spy(name):
        real = getattr(pipeline, name)

        def wrapper(*args, **kwargs):
            seen[name] = (args, kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline, name, wrapper)

    for name in ("open_live_source", "open_live_sink", "live_progress"):
        spy(name)
    rtsp.start(color=RED)
    out = tmp_path / "cli.mkv"
    result = CliRunner().invoke(main, [
        "upscale", rtsp.url, str(out), "--preset", "rtsp-live", "--device", "cpu",
        "--batch", "2", "--encoder-preset", "ultrafast", "--frames", "8",
        "--drop", "none", "--reconnect-max", "3", "--timeout", "2"])
    assert result.exit_code == 0, result.output
    frames, _ = _decode(out)
    assert len(frames) == 8 and frames[0].shape == (4 * H, 4 * W, 3)
    assert {_colour(f) for f in frames} == {"red"}
    summary = result.output.strip().splitlines()[-1]
    assert "8 frames" in summary and "dropped" not in summary
    opts = seen["open_live_source"][0][1]  # from the preset: transport, max_latency
    assert (opts.rtsp_transport, opts.max_latency) == ("tcp", 1.0)
    assert (opts.drop, opts.reconnect_max, opts.open_timeout, opts.read_timeout) == \
        ("none", 3, 2.0, 2.0), "the command line wins over the preset"
    encode = seen["open_live_sink"][1]["encode"]
    assert (encode.crf, encode.preset, encode.options) == (23, "ultrafast", {"tune": "zerolatency"})
    assert seen["live_progress"][0][3] == 10, "status_interval from the preset"


_CLI_CHILD = """
import sys
sys.path.insert(0, {here!r})
import media
import streamsr.jobs.stream
streamsr.jobs.stream.resolve_model = lambda model, device="cpu": media.BicubicX4()
from streamsr.cli import main
from streamsr.options import find_preset, load_preset
main(["upscale", {url!r}, {out!r}, "--device", "cpu", "--batch", "1",
      "--encoder-preset", "ultrafast", "--status-interval", "0.2"])
"""


@pytest.mark.timeout(60)  # a fresh interpreter with torch: ~5 s on a busy 2-core box
def test_sigterm_during_an_outage_finalises_a_playable_recording(rtsp, tmp_path):
    rtsp.start(color=RED)
    out = tmp_path / "cam.mkv"
    script = _CLI_CHILD.format(here=str(Path(__file__).parent), url=rtsp.url, out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # status lines go to stderr
            if line.startswith("live:") and " out 0.0 fps" not in line:
                break
        time.sleep(0.5)
        rtsp.stop()  # the signal comes while the feed is down and streamsr is reconnecting
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        print(f"exited {time.monotonic() - t0:.2f} s after SIGTERM")
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    frames, times = _decode(out)
    assert len(frames) > 0 and {_colour(f) for f in frames} == {"red"}
    assert f"{len(frames)} frames" in err, "the summary counts what the file holds"
    assert times == sorted(times)


def test_sigint_finalises_and_counts_the_frames_still_queued(rtsp, tmp_path):
    """SIGINT mid-stream: a playable file, exit code 130, and the frames that were still queued
    (the model is slower than the camera and --drop none lets the queues fill) are counted."""
    rtsp.start(color=RED)
    out = tmp_path / "cam.mkv"
    sent: list[float] = []

    def interrupt(done: int, total) -> None:  # runs on the encode thread
        if done == 12 and not sent:
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        upscale(rtsp.url, out, model=SlowX4(0.06), frames=10_000, progress=interrupt,
                live_options=fast_options(drop="none", queue_size=4), device="cpu",
                encoder_preset="ultrafast", batch=1)
    took = time.monotonic() - sent[0]
    exc = info.value
    assert exc.exit_code == 130 and "interrupted by SIGINT" in str(exc)
    stats = exc.stats
    frames, times = _decode(out)  # strict decode: finalised and playable
    assert len(frames) == stats.frames >= 12 and {_colour(f) for f in frames} == {"red"}
    assert times == sorted(times)
    live = stats.live
    assert live["frames_written"] == len(frames)
    assert live["dropped_stop"] > 0, "frames were still queued when the signal came"
    assert live["frames_decoded"] == len(frames) + live["dropped"], live
    assert took < 5, "stopping does not wait for the queued frames to be processed"


_KILLED_CHILD = """
import os, sys
from fractions import Fraction
import numpy as np
from streamsr.video.segments import open_live_sink
from streamsr.video.source import ColorInfo, VideoInfo
info = VideoInfo(64, 48, Fraction(25), Fraction(1, 90000), None, None, "yuv420p", ColorInfo(), 0,
                 True, "rtsp://cam")
sink = open_live_sink(sys.argv[1], info, encode=None)
rng = np.random.default_rng(0)
for i in range(130):  # 5.2 s of camera noise, keyframes every 2 s
    sink.write(rng.integers(0, 255, (192, 256, 3), dtype=np.uint8), i * 3600, Fraction(1, 90000))
os._exit(0)  # dies without closing anything, like kill -9
"""


@pytest.mark.timeout(60)  # a fresh interpreter: ~4 s each
@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_killed_live_recording_stays_playable(tmp_path, ext):
    out = tmp_path / f"cam.{ext}"
    subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(out)], check=True, timeout=45)
    frames, times = _decode(out)
    assert len(frames) >= 40, "everything up to the last keyframe survives"
    assert times == sorted(times)


def test_forced_live_file_ends_at_its_end(tmp_path):
    clip = media.make_index_clip(tmp_path / "clip.mkv", n=12)
    stats = upscale(clip, tmp_path / "out", model=media.BicubicX4(), live=True,
                    live_options=fast_options(drop="none"), **LIVE_FAST)
    frames, _ = _decode(tmp_path / "out.mkv")
    assert stats.frames == len(frames) == 12 and stats.live["reconnects"] == 0
    assert [media.read_index(f) for f in frames] == list(range(12)), "every frame once, in order"


def test_frames_limit_on_a_file(tmp_path):
    clip = media.make_index_clip(tmp_path / "clip.mp4", n=12)
    stats = upscale(clip, tmp_path / "out.mp4", model=media.BicubicX4(), frames=5, **LIVE_FAST)
    frames, _ = _decode(tmp_path / "out.mp4")
    assert stats.frames == 5 and [media.read_index(f) for f in frames] == list(range(5))
    assert stats.live is None and stats.dropped == 0


# -- fault cases (docs/faults.md; `pytest -k fault_` runs them all) ---------------------------

def test_fault_21a_rtsp_source_that_never_answers_gives_up_in_bounded_time(tmp_path, tiny_weights):
    with socket.socket() as mute:  # accepts the TCP connection, never says a word
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        url = f"rtsp://127.0.0.1:{mute.getsockname()[1]}/cam"
        t0 = time.monotonic()
        r = cli("upscale", url, tmp_path / "cam.mkv", "--model", tiny_weights, "--device", "cpu",
                "--timeout", "0.5", "--reconnect-max", "1", "-q", timeout=60)
        took = time.monotonic() - t0
    assert_one_line(r.returncode, r.stderr, "after 2 attempt")
    assert took < 45 and not (tmp_path / "cam.mkv").exists()


def test_fault_21b_rtsp_source_that_dies_for_good_keeps_the_frames_done(tmp_path, rtsp):  # noqa: F811
    """The reconnect itself is tested in test_live.py (server restart); here the server never
    comes back: after the retries the run fails, and the frames before the outage are kept."""
    rtsp.start()
    killers: list[threading.Thread] = []

    def kill_server_once(done: int, total) -> None:
        if done == 15:  # frames are flowing: the server goes away for good
            killers.append(threading.Thread(target=rtsp.stop))
            killers[-1].start()

    try:
        with pytest.raises(SourceError) as info:
            upscale(rtsp.url, tmp_path / "cam.mkv", model=media.BicubicX4(), frames=100_000,
                    live_options=fast_options(drop="none", reconnect_max=2, open_timeout=1.0),
                    device="cpu", encoder_preset="ultrafast", batch=1, progress=kill_server_once)
    finally:
        for k in killers:
            k.join(10)
    assert "\n" not in str(info.value) and killers
    got = media.decode_all(tmp_path / "cam.mkv")[0]  # strict: finalised and playable
    assert len(got) >= 15 and got[0].shape == (4 * 48, 4 * 64, 3)
