"""Small helpers around PyAV/FFmpeg shared by the inputs, the outputs, data generation and the
benchmarks: swscale flags, opening an input, NVDEC settings, FFmpeg's own error lines, and which
video stream of a file is the video."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import av
import av.logging
from av.codec.hwaccel import HWAccel
from av.video.reformatter import Interpolation

from streamsr.errors import InputError

# Exact conversions: full chroma interpolation and accurate rounding (the fast path is off by 1-2).
TO_RGB_FLAGS = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
FROM_RGB_FLAGS = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP

_NOT_MOVING = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails


def _stream_pixels(s) -> int:
    cc = s.codec_context
    return (cc.width or 0) * (cc.height or 0) if cc is not None else 0


def main_video_stream(container: av.container.InputContainer):
    """The video stream to upscale, or None: never an attached picture (cover art) or a
    thumbnail track; among the others the default-disposition one, then the largest picture,
    then the first. A cover image can come first in a file (MP4 with its tags before the
    tracks); picking streams.video[0] would upscale the cover."""
    moving = [s for s in container.streams.video if not s.disposition & _NOT_MOVING]
    if not moving:
        return None
    default = av.stream.Disposition.default
    return min(moving, key=lambda s: (not s.disposition & default, -_stream_pixels(s), s.index))


def describe_streams(container: av.container.InputContainer, chosen) -> str:
    """'#0 (attached picture, 32x32)' etc. for the video streams not taken."""
    out = []
    for s in container.streams.video:
        if s is chosen:
            continue
        cc = s.codec_context
        kind = "attached picture" if s.disposition & _NOT_MOVING else "video"
        size = f"{cc.width}x{cc.height}" if cc is not None else "?"
        out.append(f"#{s.index} ({kind}, {size})")
    return ", ".join(out)


def av_message(exc: Exception) -> str:
    """The first line of a PyAV error, at most 200 characters, for one-line messages."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).splitlines()[0][:200]


def open_input(uri: str, options: dict[str, str],
               hwaccel: HWAccel | None = None) -> av.container.InputContainer:
    """av.open, tolerating damaged (non-UTF-8) tags, which PyAV 18 refuses to open."""
    try:
        return av.open(uri, options=options, hwaccel=hwaccel)
    except UnicodeDecodeError:
        try:
            return av.open(uri, options=options, metadata_encoding="latin-1", hwaccel=hwaccel)
        except (TypeError, UnicodeDecodeError):
            raise InputError(f"{uri} has damaged metadata tags that cannot be read") from None


def cuda_hwaccel(gpu: int | None = None) -> HWAccel:
    """PyAV's NVDEC settings: frames come back to system memory (nv12, p010) for the usual
    swscale conversion; a stream NVDEC cannot take (a profile it lacks) falls back to FFmpeg's
    software decoder; FFmpeg uses the GPU's primary CUDA context, the one torch uses, instead
    of creating a second one."""
    return HWAccel("cuda", device=None if gpu is None else str(gpu), allow_software_fallback=True,
                   options={"primary_ctx": "1"})


@contextmanager
def ffmpeg_errors() -> Iterator[list[tuple[int, str, str]]]:
    """FFmpeg's error lines logged by this thread while the block runs. PyAV logs nothing by
    default, and a hardware device that cannot open says only "Operation not permitted";
    FFmpeg's own line says why ("Cannot load libcuda.so.1")."""
    old = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs:
            yield logs
    finally:
        av.logging.set_level(old)


def ffmpeg_reason(exc: Exception, logs: list[tuple[int, str, str]]) -> str:
    """The last line FFmpeg logged (see `ffmpeg_errors`), else the exception's message."""
    lines = [f"{name}: {text.strip()}" if name else text.strip() for _, name, text in logs
             if text and text.strip()]
    return lines[-1] if lines else av_message(exc)
