"""Outputs for live runs: `open_live_sink` (a push to a server, rolling segment files, or one
file) and `SegmentSink`.

A run that lasts days should not keep one ever-growing file that is lost if the process dies:
`SegmentSink` closes (and so finalises) a file every `segment_time` seconds of stream time and
opens the next one, named from a strftime pattern. The push to a server is `push.PushSink`.
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

import numpy as np

from streamsr.errors import ConfigError
from streamsr.video.encoder import EncodeOptions
from streamsr.video.push import PUSH_FORMATS, PushSink
from streamsr.video.sink import Sink, open_sink
from streamsr.video.source import VideoInfo

log = logging.getLogger(__name__)

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
