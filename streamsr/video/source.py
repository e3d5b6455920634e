"""Inputs: the `Source` interface every input implements, `open_source` (which kind of input a
path or URL is), and `VideoSource`, a video file or URL decoded with PyAV.

Decoding uses PyAV with frame threading; the decoder is always flushed at the end so the last
frames (held back by B-frame reordering or frame threads) are not lost. Frames are converted to
RGB by `frame.RgbConverter` in the input's own matrix and range; uint16 (rgb48) when asked for
`deep` frames and the input has more than 8 bits. Images are `images.ImageSource`, network
feeds `live.LiveSource`. Broken inputs fail early with an `InputError` (missing, empty, not a
video, audio-only, absurd resolution); damage inside a file that still has decodable frames is
skipped with one warning. `decoder="cuda"` decodes video files with NVDEC (PyAV's CUDA hwaccel),
frames downloaded to system memory (nv12/p010) for the same conversion; without a usable GPU it
decodes in software after one warning.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np

from streamsr.errors import ConfigError, InputError
from streamsr.video.color import ColorInfo, effective_matrix, effective_range, read_color
from streamsr.video.ffmpeg import (
    av_message,
    cuda_hwaccel,
    describe_streams,
    ffmpeg_errors,
    ffmpeg_reason,
    main_video_stream,
    open_input,
)
from streamsr.video.frame import RgbConverter, check_pixels

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_PIXELS = 7680 * 4320  # an 8K frame; its x4 output is already 530 Mpx
IMAGE_TIME_BASE = Fraction(1, 25)  # image sequences play at 25 fps when written as video
# --start/--duration above this are refused: about 31 years, longer than any real input, and
# small enough that seconds / time base stays inside FFmpeg's 64-bit timestamps
MAX_SECONDS = 1e9
# "software": FFmpeg's decoders on the CPU (frame threads); "cuda": NVDEC, falling back to
# software with a warning; "auto": NVDEC when it works, software quietly otherwise
DECODERS = ("auto", "software", "cuda")


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input before the first frame."""

    width: int
    height: int
    fps: Fraction | None
    time_base: Fraction
    frames: int | None  # estimate (for progress bars), already limited to --start/--duration
    duration: float | None
    pix_fmt: str
    color: ColorInfo
    rotation: int  # display matrix rotation, degrees counter-clockwise
    is_live: bool
    uri: str


@dataclass
class Frame:
    """One decoded frame: RGB pixels plus where it sits in time."""

    rgb: np.ndarray  # (H, W, 3) uint8 RGB, or uint16 (rgb48) for deep sources; C-contiguous
    pts: int | None  # in time_base units, as decoded
    time_base: Fraction
    index: int  # 0-based decode order index
    wallclock: float  # time.monotonic() when decoded (live latency)
    name: str | None = None  # file stem, for image-folder inputs
    duration: int | None = None  # how long it shows (time_base units), when the input says


def component_bits(pix_fmt: str) -> int:
    """Bits of the deepest component of an FFmpeg pixel format (yuv420p: 8, yuv420p10le: 10)."""
    return max((c.bits for c in av.VideoFormat(pix_fmt).components), default=8)


class Source:
    """Yields `Frame`s in presentation order; a context manager that closes the input."""

    info: VideoInfo
    skipped_packets: int = 0  # corrupt packets skipped
    truncated: bool = False  # the input ended before its header said it would
    dropped: int = 0  # frames dropped (live sources only)
    deep: bool = False  # frames are uint16 RGB (rgb48) instead of uint8
    window: tuple[float | None, float | None] = (None, None)  # input-time seconds kept

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def scale_to(self, width: int, height: int) -> None:
        """Frames of any other size are scaled to `width` x `height` (a part of a longer video:
        the size of the video's first frame)."""
        self.info = replace(self.info, width=width, height=height)

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_window(start: float | None, duration: float | None) -> None:
    """Refuse a --start/--duration no input can have: not a number, infinite, negative (a
    duration of 0), or past MAX_SECONDS. Raises ConfigError (one line) instead of letting nan
    or 1e308 reach FFmpeg's seek as a timestamp it cannot hold."""
    for name, value, low in (("--start", start, "0 or more"), ("--duration", duration, "more than 0")):
        if value is None:
            continue
        try:
            if isinstance(value, (bool, str, bytes)):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}")
        if number < 0 or (name == "--duration" and number == 0) or number > MAX_SECONDS:
            raise ConfigError(f"{name} must be {low} seconds and at most {MAX_SECONDS:g}, "
                              f"got {value!r}")


def check_frames(frames: int | None) -> None:
    """Refuse a --frames limit that is not a positive whole number."""
    if frames is None:
        return
    try:
        whole = None if isinstance(frames, bool) else operator.index(frames)  # int, numpy ints
    except TypeError:
        whole = None
    if whole is None or whole < 1:
        raise ConfigError(f"--frames must be a whole number of frames, 1 or more, got {frames!r}")


class VideoSource(Source):
    """A file (or URL) decoded with PyAV: frame threads, flush at the end, skip damage.

    `deep`: yield uint16 RGB (rgb48) when the input has more than 8 bits per component (for a
    high-bit-depth output); 8-bit inputs, and every input without it, give uint8 RGB.
    """

    def __init__(self, uri: str, *, start: float | None = None, duration: float | None = None,
                 options: dict[str, str] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 is_live: bool = False, deep: bool = False, decoder: str = "software",
                 gpu: int | None = None) -> None:
        self.uri = uri
        self.deep = deep
        if decoder not in DECODERS:
            raise ConfigError(f"unknown decoder {decoder!r}; use {', '.join(DECODERS)}")
        self.decoder = "software"  # what decodes the video: "software" or "cuda" (NVDEC)
        try:
            self.container = self._open(uri, options or {}, decoder, gpu)
        except av.error.FileNotFoundError:
            raise InputError(f"input not found: {uri}") from None
        except av.error.PermissionError:
            raise InputError(f"cannot read {uri}: permission denied") from None
        except av.error.IsADirectoryError:
            raise InputError(f"{uri} is a directory without images") from None
        except (av.error.InvalidDataError, av.error.EOFError):
            raise InputError(f"{uri} is not a video file FFmpeg can read") from None
        except av.error.FFmpegError as exc:
            if is_live:
                raise InputError(f"cannot open {uri}: {av_message(exc)}") from None
            raise InputError(f"{uri} is not a video file FFmpeg can read (damaged header or an "
                             f"impossible frame size; FFmpeg said: {av_message(exc)})") from None
        try:
            self._setup(start, duration, max_pixels, is_live)
        except BaseException:
            self.container.close()
            raise

    def _open(self, uri: str, options: dict[str, str], decoder: str,
              gpu: int | None) -> av.container.InputContainer:
        """The input, its video decoded by NVDEC when asked for and possible (logged either way)."""
        if decoder == "software":
            return open_input(uri, options)
        try:
            with ffmpeg_errors() as logs:
                container = open_input(uri, options, hwaccel=cuda_hwaccel(gpu))
        except av.error.FFmpegError as exc:
            container = open_input(uri, options)  # an unreadable input fails here, as usual
            self._software(decoder, f"no CUDA device ({ffmpeg_reason(exc, logs)})")
            return container
        main = main_video_stream(container)
        cc = main.codec_context if main is not None else None
        if cc is not None and cc.is_hwaccel:
            self.decoder = "cuda"
            log.info("%s: decoding %s with NVDEC (CUDA)", uri, cc.name)
        elif cc is not None:
            self._software(decoder, f"NVDEC has no {cc.name} decoder")
        return container

    def _software(self, asked: str, reason: str) -> None:
        """Say once why NVDEC is not used: a warning when it was asked for, else info."""
        level = logging.WARNING if asked == "cuda" else logging.INFO
        log.log(level, "%s: CUDA decoding (NVDEC) unavailable: %s; decoding in software",
                self.uri, reason)

    def _setup(self, start, duration, max_pixels, is_live) -> None:
        c = self.container
        check_window(start, duration)
        vs = main_video_stream(c)
        if vs is None:
            kinds = sorted({s.type for s in c.streams if s.type != "video"})
            what = f"only {', '.join(kinds)} streams" if kinds else "no streams"
            if c.streams.video:
                what += " and an attached picture (cover art)"
            raise InputError(f"{self.uri} has no video stream ({what})")
        self.stream = vs
        if len(c.streams.video) > 1:
            log.info("%s: upscaling video stream #%d (%dx%d); not the other video streams: %s",
                     self.uri, vs.index, vs.codec_context.width if vs.codec_context else 0,
                     vs.codec_context.height if vs.codec_context else 0, describe_streams(c, vs))
        # audio is demuxed alongside (not decoded) so that the end of the file is known: video
        # that stops before the audio does is shorter, not truncated
        self._audio = tuple(s for s in c.streams.audio)
        self._data_end: float | None = None  # latest audio packet time seen (input seconds)
        cc = vs.codec_context
        if cc is None:
            raise InputError(f"{self.uri}: FFmpeg has no decoder for its video stream (unknown "
                             f"or damaged codec)")
        check_pixels(self.uri, cc.width, cc.height, max_pixels)
        cc.thread_type = "AUTO"  # frame + slice threads
        cc.thread_count = 0
        self.time_base = vs.time_base or Fraction(1, 90000)
        first = vs.start_time if vs.start_time is not None else 0
        self._t0 = float(first * self.time_base)
        self._start = self._t0 + start if start else None
        self._end = (self._start or self._t0) + duration if duration else None
        self.window = (self._start, self._end)
        if self._start is not None and not is_live:
            try:
                c.seek(int(self._start / self.time_base), stream=vs, backward=True)
            except av.error.FFmpegError as exc:
                log.warning("%s: cannot seek (%s); decoding from the beginning", self.uri, av_message(exc))
        self._warned: set[str] = set()
        self._frames = self._decode()
        self._first = next(self._frames, None)  # proves the file decodes; gives tags and rotation
        if self._start is not None and not is_live:
            self._seek_earlier_if_past_start()
        self._skip_to_window()
        if self._first is None:
            raise InputError(self._no_frames_message())
        f = self._first
        check_pixels(self.uri, f.width, f.height, max_pixels)  # headers can understate it
        color = read_color(f, cc)
        fps = vs.average_rate or vs.guessed_rate or None
        total = None
        file_duration = None
        if c.duration:
            file_duration = c.duration / 1_000_000
        elif vs.duration:
            file_duration = float(vs.duration * self.time_base)
        if vs.frames:
            total = vs.frames
        elif file_duration and fps:
            total = round(file_duration * fps)
        if fps and (start or duration) and file_duration:
            lo = start or 0.0
            hi = min(file_duration, lo + duration) if duration else file_duration
            total = max(0, round((hi - lo) * fps))
        self._file_duration = file_duration
        self._fps = fps
        self.info = VideoInfo(width=f.width, height=f.height, fps=Fraction(fps) if fps else None,
                              time_base=self.time_base, frames=total, duration=file_duration,
                              pix_fmt=f.format.name, color=color, rotation=int(round(f.rotation or 0)),
                              is_live=is_live, uri=self.uri)
        self.deep = self.deep and component_bits(f.format.name) > 8
        self._to_rgb = RgbConverter(self.uri, self.info, deep=self.deep, max_pixels=max_pixels)
        log.info("input %s: %dx%d %s, %s fps, colour %s/%s (%s), rotation %d, %s decoder",
                 self.uri, f.width, f.height, f.format.name, fps, effective_matrix(self.info),
                 effective_range(self.info), color, self.info.rotation, self.decoder)

    def _seek_earlier_if_past_start(self) -> None:
        """Seek again, earlier, when the first decoded frame is already after --start.

        Some demuxers (MPEG-TS) seek by decode time and land past the keyframe before `start`;
        the frames from `start` up to the next keyframe would be lost. Back off 2 s, 30 s, then
        decode from the beginning (the window filter in `__iter__` drops what comes before).
        """
        eps = float(self.time_base) / 2
        for back in (2.0, 30.0, None):
            f = self._first
            pts = None if f is None else (f.pts if f.pts is not None else f.dts)
            if pts is not None and float(pts * self.time_base) <= self._start + eps:
                return
            target = -(1 << 40) if back is None else int((self._start - back) / self.time_base)
            self._frames.close()
            try:
                self.container.seek(target, stream=self.stream, backward=True)
            except av.error.FFmpegError:
                return
            self._frames = self._decode()
            self._first = next(self._frames, None)

    def _skip_to_window(self) -> None:
        """Decode past the frames before --start, so that `_first` is the first frame the run
        keeps; None when the window holds no frame (a --start past the end of the video)."""
        eps = float(self.time_base) / 2
        f = self._first
        while f is not None:
            pts = f.pts if f.pts is not None else f.dts
            if pts is None:  # no timestamp to judge by: __iter__ decides
                break
            t = float(pts * self.time_base)
            if self._end is not None and t >= self._end - eps:
                f = None
                break
            if self._start is None or t >= self._start - eps:
                break
            f = next(self._frames, None)
        self._first = f

    def _no_frames_message(self) -> str:
        if self._start is None and self._end is None:
            return f"{self.uri}: no decodable video frames"
        c, tb = self.container, self.time_base
        length = (float(self.stream.duration * tb) if self.stream.duration
                  else c.duration / 1_000_000 if c.duration else None)
        lasts = f" (its video lasts {length:.2f} s)" if length else ""
        if self._start is not None:
            return (f"{self.uri}: no video frames at or after --start "
                    f"{self._start - self._t0:g} s{lasts}")
        return f"{self.uri}: no decodable video frames in the requested --duration{lasts}"

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _packets(self) -> Iterator[av.Packet]:
        """Demux the video stream; a read error mid-file is retried (resync), at EOF it ends.

        Audio packets are read too (FFmpeg reads them either way) only to note where the file's
        audio ends, for `_check_complete`."""
        errors = 0
        video = self.stream.index
        while True:
            try:
                for packet in self.container.demux(self.stream, *self._audio):
                    errors = 0
                    if packet.stream_index != video:
                        if packet.pts is not None and packet.time_base is not None:
                            t = float(packet.pts * packet.time_base)
                            if self._data_end is None or t > self._data_end:
                                self._data_end = t
                        continue
                    yield packet
                return
            except av.error.EOFError:
                return
            except av.error.FFmpegError as exc:
                errors += 1
                self.truncated = True
                self._warn_once("demux", "%s: damaged or truncated input (%s); keeping every "
                                "frame that decodes", self.uri, av_message(exc))
                if errors >= 8:
                    return

    def _decode(self) -> Iterator[av.VideoFrame]:
        """Decoded frames in presentation order, corrupt packets skipped, decoder flushed."""
        cc = self.stream.codec_context
        flushed = False
        for packet in self._packets():
            try:
                frames = packet.decode()
            except av.error.EOFError:
                frames = []
            except av.error.FFmpegError as exc:
                self.skipped_packets += 1
                self._warn_once("packet", "%s: skipping undecodable packet(s) (%s)", self.uri,
                                av_message(exc))
                continue
            if packet.size == 0 and packet.dts is None:
                flushed = True
            yield from frames
        if not flushed:  # the demuxer stopped early: drain the frames the decoder still holds
            try:
                yield from cc.decode(None)
            except av.error.FFmpegError:
                pass

    def scale_to(self, width: int, height: int) -> None:
        super().scale_to(width, height)
        self._to_rgb.width, self._to_rgb.height = width, height

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        last_pts: int | None = None
        step = max(1, round(1 / (self._fps * self.time_base))) if self._fps else 1
        frames = self._frames
        first, self._first = self._first, None
        pending = [first] if first is not None else []
        eps = float(self.time_base) / 2
        last_time = None
        while True:
            if pending:
                f = pending.pop()
            else:
                f = next(frames, None)
                if f is None:
                    break
            pts = f.pts if f.pts is not None else f.dts
            if pts is None:
                pts = 0 if last_pts is None else last_pts + step
            t = float(pts * self.time_base)
            if self._start is not None and t < self._start - eps:
                continue
            if self._end is not None and t >= self._end - eps:
                break
            if last_pts is not None and pts <= last_pts:
                self._warn_once("pts", "%s: non-increasing timestamps; shifting them to keep order",
                                self.uri)
                pts = last_pts + 1
            last_pts, last_time = pts, t
            yield Frame(self._to_rgb(f, index), pts, self.time_base, index, time.monotonic(),
                        duration=f.duration or None)
            index += 1
        self._check_complete(last_time, index)

    def _check_complete(self, last_time: float | None, yielded: int = 0) -> None:
        """Warn when the file stops well before the duration (or frame count) its header announced."""
        declared = self.stream.frames  # exact in MP4/MOV (sample count), 0 when unknown
        if (declared and not self.info.is_live and self._start is None and self._end is None
                and yielded + self.skipped_packets < declared):
            self.truncated = True
            self._warn_once("demux", "%s: decoded %d of the %d frames its header lists (truncated "
                            "or damaged); kept every frame that decodes", self.uri, yielded, declared)
            return
        if self._end is not None or self.info.is_live or last_time is None or not self._file_duration:
            return
        frame = 1 / float(self._fps) if self._fps else 0.1
        expected_end = self._t0 + self._file_duration
        slack = max(0.5, 3 * frame)
        if last_time + frame < expected_end - slack:
            if self._data_end is not None and self._data_end >= expected_end - slack:
                # the audio goes on to the end the header gives: the video is shorter, not cut
                log.debug("%s: the video ends at %.2f s and the audio runs on to %.2f s (not "
                         "truncated)", self.uri, last_time + frame - self._t0,
                         self._file_duration)
                return
            self.truncated = True
            self._warn_once("demux", "%s: input ends at %.2f s but its header says %.2f s "
                            "(truncated or damaged); kept the %d frames that decode", self.uri,
                            last_time - self._t0, self._file_duration, yielded)

    def close(self) -> None:
        self.container.close()


def is_url(uri: str) -> bool:
    """True for URLs (scheme://...), which are opened by FFmpeg as they are."""
    scheme = urlsplit(str(uri)).scheme
    return len(scheme) > 1 and "://" in str(uri)


def open_source(uri: str | os.PathLike, *, start: float | None = None,
                duration: float | None = None, options: dict[str, str] | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, deep: bool = False,
                decoder: str = "software", gpu: int | None = None) -> Source:
    """Open a video file, URL, single image or folder of images for decoding.

    `deep`: videos with more than 8 bits give uint16 RGB frames (images stay uint8).
    `decoder`: "software", "cuda" (NVDEC on GPU `gpu`, software after a warning when it cannot
    be used) or "auto" (NVDEC when it can be used); images are always decoded in software.
    """
    from streamsr.video.images import ImageSource, list_images  # images.py builds on this module

    uri = str(uri)
    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {decoder!r}; use {', '.join(DECODERS)}")
    if is_url(uri) and not uri.startswith("file://"):
        return VideoSource(uri, start=start, duration=duration, options=options,
                           max_pixels=max_pixels, is_live=True, deep=deep, decoder=decoder, gpu=gpu)
    path = Path(uri.removeprefix("file://"))
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise InputError(f"{uri} is a folder with no images ({', '.join(sorted(IMAGE_EXTS))})")
        return ImageSource(uri, images, start=start, duration=duration, max_pixels=max_pixels)
    if not path.exists():
        raise InputError(f"input not found: {uri}")
    if not path.is_file():
        raise InputError(f"{uri} is not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{uri} is empty (0 bytes)")
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageSource(uri, [path], start=start, duration=duration, max_pixels=max_pixels)
    return VideoSource(str(path), start=start, duration=duration, options=options,
                       max_pixels=max_pixels, deep=deep, decoder=decoder, gpu=gpu)
