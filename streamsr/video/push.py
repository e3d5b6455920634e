"""Push the x4 stream to a server (RTSP, RTMP, or UDP/SRT/TCP as MPEG-TS) so it can be watched
while it is made: low-delay encoder settings, a keyframe every second, and reconnection with
capped exponential backoff when the server goes away."""

from __future__ import annotations

import logging
import time
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np

from streamsr.errors import ConfigError, OutputError
from streamsr.video.color import ColorInfo, default_matrix, tag_color
from streamsr.video.encoder import (
    EncodeOptions,
    TimestampRepair,
    encoder_options,
    mux_repaired,
    parse_bitrate,
)
from streamsr.video.frame import rgb_to_yuv
from streamsr.video.sink import Sink

log = logging.getLogger(__name__)

PUSH_FORMATS = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv",
                "udp": "mpegts", "srt": "mpegts", "tcp": "mpegts"}


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
        tag_color(cc, ColorInfo(matrix=self._matrix, range="tv"))  # limited, what players assume
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
        frame = rgb_to_yuv(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"),
                           self._encode.pix_fmt, self._matrix, "tv")
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
        mux_repaired(self._timestamps, packet, self._mux)

    def _mux(self, packet: av.Packet) -> None:
        self._bytes += packet.size
        self._container.mux(packet)

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
