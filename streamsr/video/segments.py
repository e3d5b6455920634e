"""Outputs for live runs: rolling segment files and push to an RTSP/RTMP server.

A run that lasts days should not keep one ever-growing file that is lost if the process dies:
`SegmentSink` closes (and so finalises) a file every `segment_time` seconds of stream time and
opens the next one, named from a strftime pattern. `PushSink` encodes with low-delay settings
and sends the x4 stream to an RTSP or RTMP server so it can be watched while it is made.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np

from streamsr.errors import ConfigError, OutputError
from streamsr.video.color import MATRICES, default_matrix, sws_matrix, sws_range
from streamsr.video.ffmpeg import FROM_RGB_FLAGS
from streamsr.video.sink import (
    EncodeOptions,
    Sink,
    TimestampRepair,
    encoder_options,
    open_sink,
    parse_bitrate,
)
from streamsr.video.source import VideoInfo

log = logging.getLogger(__name__)

PUSH_FORMATS = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv",
                "udp": "mpegts", "srt": "mpegts", "tcp": "mpegts"}
LIVE_DEFAULT_SUFFIX = ".mkv"  # stays playable if the process dies mid-write


def is_push_url(dst: str) -> bool:
    """True when the output is a server to push to rather than a file."""
    return urlsplit(str(dst)).scheme.lower() in PUSH_FORMATS


def live_output_path(dst: str) -> str:
    """The output file for a live run: MKV when no container was named."""
    return dst if Path(dst).suffix else dst + LIVE_DEFAULT_SUFFIX


def live_output_label(dst: str, segment_time: float | None) -> str:
    """What a live run writes to, for summaries: the URL, the segment pattern, or the file."""
    return dst if is_push_url(dst) else live_output_path(dst)


def open_live_sink(dst: str, info: VideoInfo, *, scale: int = 4,
                   encode: EncodeOptions | None = None, segment_time: float | None = None,
                   overwrite: bool = False, rtsp_transport: str = "tcp") -> Sink:
    """The output of a live run: a push to a server, rolling segments, or one MKV/MP4 file."""
    encode = encode or EncodeOptions()
    if is_push_url(dst):
        if segment_time:
            raise ConfigError("--segment-time applies to files, not to a push to a server")
        return PushSink(dst, info.width * scale, info.height * scale, info.fps, encode,
                        rtsp_transport=rtsp_transport)
    if "g" not in encode.options:  # a keyframe every 2 s: files are cut (and flushed) there
        fps = float(info.fps) if info.fps else 25.0
        encode = dataclasses.replace(encode, options={**encode.options, "g": str(max(1, round(2 * fps)))})
    if segment_time:
        return SegmentSink(dst, lambda path: open_sink(path, info, scale=scale, encode=encode,
                                                       overwrite=overwrite), segment_time)
    return open_sink(live_output_path(dst), info, scale=scale, encode=encode, overwrite=overwrite)


class SegmentSink(Sink):
    """Writes rolling files of `segment_time` seconds; each is finalised when the next begins."""

    def __init__(self, pattern: str, open_file: Callable[[str], Sink],
                 segment_time: float, *, clock: Callable[[], float] = time.time) -> None:
        if segment_time <= 0:
            raise ConfigError("--segment-time must be a positive number of seconds")
        self.pattern = live_output_path(pattern)
        self.segment_time = segment_time
        self.segments: list[str] = []
        self.frames_written = 0
        self._open_file = open_file
        self._clock = clock
        self._sink: Sink | None = None
        self._start_pts: int | None = None
        self._last_pts: int | None = None
        self.path = Path(self.pattern)

    @property
    def bytes_written(self) -> int:
        return sum(os.path.getsize(p) for p in self.segments if os.path.exists(p))

    def _next_name(self) -> str:
        name = time.strftime(self.pattern, time.localtime(self._clock()))
        if name in self.segments or os.path.exists(name):
            stem, suffix = os.path.splitext(name)
            n = 1
            while f"{stem}_{n:03d}{suffix}" in self.segments or os.path.exists(f"{stem}_{n:03d}{suffix}"):
                n += 1
            name = f"{stem}_{n:03d}{suffix}"  # sorts after the first file of that second
        return name

    def _roll(self, pts: int) -> None:
        self._close_current()
        name = self._next_name()
        parent = os.path.dirname(name)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._sink = self._open_file(name)
        self._start_pts = pts
        self.segments.append(name)
        log.info("segment: writing %s", name)

    def write(self, rgb: np.ndarray, pts: int | None, time_base: Fraction,
              name: str | None = None, duration: int | None = None) -> None:
        """Write one frame; starts a new file once the current one spans `segment_time`."""
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + 1
        if self._sink is None or (pts - self._start_pts) * time_base >= self.segment_time:
            self._roll(pts)
        self._sink.write(rgb, pts - self._start_pts, time_base, duration=duration)
        self._last_pts = pts
        self.frames_written += 1

    def _close_current(self, trim: bool = False) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.close(trim=trim)
            log.info("segment: finalised %s (%d frames)", self.segments[-1], sink.frames_written)

    def close(self, trim: bool = False) -> None:
        """Finalise the open segment."""
        self._close_current(trim)


class PushSink(Sink):
    """Encodes frames with low-delay x264 and pushes them to an RTSP/RTMP (or UDP) server.

    When the server goes away mid-run, the frames meanwhile are counted as lost and the
    connection is retried with capped exponential backoff; each new connection is a fresh
    stream (new encoder, timestamps from 0, a keyframe first) so viewers can join it.
    """

    def __init__(self, url: str, width: int, height: int, fps: Fraction | float | None,
                 encode: EncodeOptions | None = None, *, rtsp_transport: str = "tcp",
                 timeout: float = 10.0, reconnect: bool = True, backoff_max: float = 30.0) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in PUSH_FORMATS:
            raise ConfigError(f"cannot push to {scheme}:// (use rtsp:// or rtmp://)")
        self.url = url
        self.path = Path(url)
        self.frames_written = 0
        self.frames_lost = 0  # frames that arrived while the server was unreachable
        self.reconnects = 0
        self._bytes = 0
        self._encode = encode or EncodeOptions(preset="veryfast", crf=23)
        self._size = (width, height)
        self._rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(25)
        self._format = PUSH_FORMATS[scheme]
        self._mux_opts = {"rtsp_transport": rtsp_transport} if self._format == "rtsp" else {}
        self._timeout = timeout
        self._reconnect = reconnect
        self._backoff_max = backoff_max
        self._matrix = default_matrix(width, height)
        self._tb = Fraction(1, 90000)
        self._container: av.container.OutputContainer | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False
        self._open()

    def _open(self) -> None:
        """Connect and set up a fresh encoder; OutputError/ConfigError when that fails."""
        encode = self._encode
        try:
            container = av.open(self.url, "w", format=self._format, options=self._mux_opts,
                                timeout=(self._timeout, self._timeout))
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot push to {self.url}: {exc}") from None
        codec_opts = {"g": str(max(1, round(self._rate))), "bf": "0"}  # keyframe every second
        if encode.codec in ("libx264", "libx265"):
            codec_opts["tune"] = "zerolatency"
        codec_opts.update(encoder_options(encode))
        try:
            stream = container.add_stream(encode.codec, rate=self._rate, options=codec_opts)
        except (av.FFmpegError, ValueError) as exc:
            container.close()
            raise ConfigError(f"cannot push with encoder {encode.codec}: {exc}") from None
        stream.width, stream.height = self._size
        stream.pix_fmt = encode.pix_fmt
        cc = stream.codec_context
        cc.colorspace = {v: k for k, v in MATRICES.items()}[self._matrix]
        cc.color_range = 1  # limited ("tv"), what players assume
        if encode.bitrate:
            cc.bit_rate = parse_bitrate(encode.bitrate)
        cc.time_base = self._tb
        try:
            container.start_encoding()  # connects and announces the stream now, not at frame 1
        except (av.FFmpegError, OSError) as exc:
            try:
                container.close()
            except (av.FFmpegError, OSError):
                pass
            raise OutputError(f"cannot push to {self.url}: {exc}") from None
        self._container, self._stream = container, stream
        self._timestamps = TimestampRepair()  # encoder packets the muxer would refuse (x265)
        self._first_pts: int | None = None
        self._last_pts: int | None = None

    def _hang_up(self) -> None:
        container, self._container = self._container, None
        try:
            container.close()
        except (av.FFmpegError, OSError):
            pass

    def _retry(self) -> bool:
        """Try to reconnect if the backoff allows; True when connected again."""
        if time.monotonic() < self._retry_at:
            return False
        try:
            self._open()
        except OutputError as exc:
            self._failures += 1
            delay = min(self._backoff_max, 0.5 * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
            log.warning("push: reconnect attempt %d failed (%s); retrying in %.1fs",
                        self._failures, exc, delay)
            return False
        self.reconnects += 1
        log.warning("push: reconnected to %s (%d frames lost while it was down)", self.url,
                    self.frames_lost)
        self._failures = 0
        return True

    @property
    def bytes_written(self) -> int:
        return self._bytes

    def write(self, rgb: np.ndarray, pts: int | None, time_base: Fraction,
              name: str | None = None, duration: int | None = None) -> None:
        """Encode and send one RGB frame at `pts` (in `time_base`)."""
        if self._container is None and not self._retry():
            self.frames_lost += 1
            return
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
            format=self._encode.pix_fmt, dst_colorspace=sws_matrix(self._matrix),
            dst_color_range=sws_range("tv"), interpolation=FROM_RGB_FLAGS)
        out = round(pts * time_base / self._tb) if pts is not None else None
        if out is not None and self._first_pts is None:
            self._first_pts = out
        out = out - self._first_pts if out is not None else None  # each connection starts at 0
        if out is None or (self._last_pts is not None and out <= self._last_pts):
            out = 0 if self._last_pts is None else self._last_pts + 1
        frame.pts, frame.time_base = out, self._tb
        self._last_pts = out
        try:
            for packet in self._stream.encode(frame):
                self._send(packet)
        except (av.FFmpegError, OSError) as exc:
            if not self._reconnect:
                raise OutputError(f"push to {self.url} failed: {exc}") from None
            log.warning("push: lost %s (%s); reconnecting", self.url, exc)
            self._hang_up()
            self._retry_at = time.monotonic() + 0.5
            self.frames_lost += 1
            return
        self.frames_written += 1

    def _send(self, packet: av.Packet | None) -> None:
        """Mux one encoded packet (None: release a held one) with timestamps the muxer accepts."""
        repair = self._timestamps
        ready = repair.flush() if packet is None else repair.push(packet, packet.pts, packet.dts)
        for pkt, pts, dts in ready:
            if (pkt.pts, pkt.dts) != (pts, dts):
                pkt.pts, pkt.dts = pts, dts
            self._bytes += pkt.size
            self._container.mux(pkt)

    def close(self, trim: bool = False) -> None:
        """Flush the encoder and end the session with the server."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._send(packet)
            self._send(None)
        except (av.FFmpegError, OSError) as exc:
            log.warning("push: flushing to %s failed: %s", self.url, exc)
        finally:
            try:
                self._container.close()
            except (av.FFmpegError, OSError) as exc:
                log.warning("push: closing %s failed: %s", self.url, exc)
        if self.frames_lost:
            log.warning("push: %d frames could not be sent while %s was down", self.frames_lost,
                        self.url)
