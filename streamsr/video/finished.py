"""Is an existing output a finished upscale of this input? `--resume` keeps only those.

`--resume` leaves an output that exists alone instead of redoing it. That must not take for
finished a file cut short by a run without `--resume` (which finalises what it has on Ctrl-C),
nor some other video that happens to sit at the output path. The evidence is cheap (packets
are counted, one frame of the input is decoded, the output is not decoded): the output's video
has the frame size this run writes (the input's first frame x the model's scale, or the
--outscale/--size target), the input's frame count (for a damaged input, the frames of it that
decode) and the input's length from first to last timestamp (within two frames).
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av

from streamsr.errors import InputError, OutputError
from streamsr.video.ffmpeg import main_video_stream, open_input
from streamsr.video.output_paths import ffmpeg_name
from streamsr.video.split import read_keyframe_index

log = logging.getLogger(__name__)


def _video(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The main video stream (never a cover picture or thumbnail track; see
    `main_video_stream`); IndexError when there is none, as `streams.video[0]` gives."""
    vs = main_video_stream(container)
    if vs is None:
        raise IndexError(f"{container.name} has no video stream")
    return vs


def video_geometry(src: Path) -> tuple[int, int, int]:
    """(width, height, rotation) of the first frame of the main video stream (the header's
    size when no frame decodes)."""
    try:
        container = open_input(ffmpeg_name(src), {})
    except av.error.FFmpegError:
        raise InputError(f"{src} is not a video file FFmpeg can read") from None
    with container as c:
        vs = main_video_stream(c)
        if vs is None:
            raise InputError(f"{src} has no video stream")
        width, height, rotation = vs.codec_context.width, vs.codec_context.height, 0
        try:
            for f in c.decode(vs):
                width, height, rotation = f.width, f.height, int(round(f.rotation or 0))
                break
        except av.error.FFmpegError:
            pass
        return width, height, rotation


def count_frames(path: Path) -> int:
    """Video packets (frames) of the main video stream, without decoding."""
    with av.open(ffmpeg_name(path)) as c:
        return sum(1 for p in c.demux(_video(c)) if p.size)


def decodable_frames(path: Path) -> int:
    """Frames of the main video stream that decode (damaged packets skipped, decoder flushed)."""
    n = 0
    with open_input(ffmpeg_name(path), {}) as c:
        vs = _video(c)
        vs.thread_type = "AUTO"
        for packet in c.demux(vs):
            try:
                n += len(packet.decode())  # the empty end-of-stream packet flushes the decoder
            except av.error.FFmpegError:
                continue
    return n


def _output_facts(path: Path) -> tuple[int, tuple[int, int], float | None]:
    """(frames, (width, height), seconds from the first frame's timestamp to the last's)."""
    with av.open(ffmpeg_name(path)) as c:
        vs = _video(c)
        size = (vs.codec_context.width, vs.codec_context.height)
        tb = vs.time_base or Fraction(1, 90000)
        frames, lo, hi = 0, None, None
        for p in c.demux(vs):
            if not p.size:
                continue
            frames += 1
            if p.pts is not None:
                lo = p.pts if lo is None else min(lo, p.pts)
                hi = p.pts if hi is None else max(hi, p.pts)
    return frames, size, float((hi - lo) * tb) if lo is not None else None


def check_finished(src: Path, dst: Path, size: tuple[int, int], *,
                   recorded: int | None = None) -> int:
    """The frame count of `dst` when it is a finished upscale of `src` at `size`, else an
    OutputError that says what does not match. `recorded`: a frame count our own join wrote
    down for a damaged input (it may hold fewer frames than the input's packets)."""
    try:
        have, got, span = _output_facts(dst)
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError):  # not a video: not ours
        raise OutputError(f"{dst} exists but is not a finished video: pass --overwrite to start "
                          f"over") from None
    if got != tuple(size):
        raise OutputError(f"{dst} exists but is not an upscale of {src}: it is {got[0]}x{got[1]}, "
                          f"this run writes {size[0]}x{size[1]}; pass --overwrite to replace it")
    if recorded is not None and recorded == have:
        return have
    index = read_keyframe_index(src)
    want = index.frames if index else None
    if want is None:
        return have
    if have > want:
        raise OutputError(f"{dst} exists but is not an upscale of {src}: it has {have} frames, "
                          f"the input {want}; pass --overwrite to replace it")
    if have < want:
        # packets that never decode (a recording cut mid-GOP, damaged ones) give a finished run
        # fewer frames than the index: only decoding the input tells those apart (rare, and
        # far cheaper than upscaling again)
        log.info("%s has %d of %d frames: counting the frames of %s that decode", dst, have,
                 want, src)
        decodable = decodable_frames(src)
        if have < decodable:
            raise OutputError(f"{dst} is incomplete ({have} of {decodable} frames), from a run "
                              f"without --resume: pass --overwrite to start over")
        return have
    if span is not None and want > 1:
        wanted = float((index.pts[-1] - index.pts[0]) * index.time_base)
        frame = wanted / (want - 1)
        if abs(span - wanted) > 2 * frame + 0.002:  # MKV keeps milliseconds
            raise OutputError(f"{dst} exists but is not an upscale of {src}: it lasts {span:.3f} s "
                              f"from its first frame to its last, the input {wanted:.3f} s; pass "
                              f"--overwrite to replace it")
    return have
