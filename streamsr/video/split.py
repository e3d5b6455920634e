"""Cut a video at keyframes into contiguous parts, and join encoded parts back with a stream copy.

The keyframe index comes from demuxing packets only (no decoding): every video packet's
presentation timestamp and keyframe flag. A part is a range of presentation timestamps
[start_pts, end_pts) whose start is a keyframe, so a decoder seeking to it needs nothing from
before; frames are assigned to parts by timestamp, not by time rounding, so no frame is lost or
doubled at a border (B-frames and open-GOP leading frames included: they sort before the
keyframe they follow in decode order and belong to the part before it).

`join_parts` copies the encoded video packets of the parts into one container, shifting each
part's timestamps back to the input's, and copies audio, subtitles, chapters and metadata once
from the input, interleaved like `VideoSink` does.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

from streamsr.errors import InputError, OutputError
from streamsr.video.encoder import tag_hevc
from streamsr.video.ffmpeg import main_video_stream, open_input
from streamsr.video.output_paths import ffmpeg_name
from streamsr.video.remux import CopiedStreams

log = logging.getLogger(__name__)

_FASTSTART_FORMATS = {"mp4", "mov", "ipod", "ismv"}


@dataclass(frozen=True)
class KeyframeIndex:
    """Presentation timestamps of every video frame of a file and which ones are keyframes."""

    time_base: Fraction
    start_time: int | None  # the stream's start_time (time_base units), as the decoder sees it
    pts: tuple[int, ...]  # every frame, in presentation order
    keyframes: tuple[int, ...]  # positions in `pts` of the keyframes, increasing

    @property
    def frames(self) -> int:
        return len(self.pts)


@dataclass(frozen=True)
class Segment:
    """One part: frames [first, first + frames) in presentation order = pts [start_pts, end_pts)."""

    index: int
    first: int
    frames: int
    start_pts: int
    end_pts: int | None  # exclusive; None for the last part (up to the end of the file)

    def as_dict(self) -> dict:
        return asdict(self)


def read_keyframe_index(path: str | os.PathLike) -> KeyframeIndex | None:
    """Demux (without decoding) the first video stream; None when packets carry no timestamps."""
    try:
        container = open_input(str(path), {})
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot open {path}: {exc}") from None
    with container:
        vs = main_video_stream(container)  # the stream the parts decode (not a cover picture)
        if vs is None:
            raise InputError(f"{path} has no video stream")
        tb = vs.time_base or Fraction(1, 90000)
        start_time = vs.start_time  # read while the container is open (PyAV frees it on close)
        frames: list[tuple[int, bool]] = []
        try:
            for packet in container.demux(vs):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    log.info("%s: video packets without timestamps; cannot split at keyframes", path)
                    return None
                frames.append((int(packet.pts), bool(packet.is_keyframe)))
        except av.error.FFmpegError as exc:
            log.warning("%s: index stops at a damaged packet (%s)", path, exc)
    frames.sort(key=lambda f: f[0])
    pts = tuple(p for p, _ in frames)
    if len(set(pts)) != len(pts):
        log.info("%s: repeated video timestamps; cannot split at keyframes", path)
        return None
    keyframes = tuple(i for i, (_, key) in enumerate(frames) if key)
    return KeyframeIndex(tb, start_time, pts, keyframes)


def plan_segments(index: KeyframeIndex | None, parts: int) -> list[Segment]:
    """Up to `parts` contiguous keyframe-aligned segments of about equal frame counts.

    Each cut is the keyframe nearest to an equal split; fewer keyframes mean fewer segments. An
    index of None (no timestamps) gives one segment covering the whole file.
    """
    if index is None or index.frames == 0:
        return [Segment(0, 0, index.frames if index else 0, index.pts[0] if index and index.pts else 0, None)]
    total = index.frames
    candidates = [k for k in index.keyframes if k > 0]
    cuts: list[int] = []
    for j in range(1, max(1, parts)):
        target = j * total / parts
        best = None
        for k in candidates:
            if cuts and k <= cuts[-1]:
                continue
            if best is None or abs(k - target) < abs(best - target):
                best = k
        if best is not None and best not in cuts:
            cuts.append(best)
    bounds = [0, *cuts, total]
    segments = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        end = index.pts[b] if b < total else None
        segments.append(Segment(i, a, b - a, index.pts[a], end))
    return segments


def segment_window(index: KeyframeIndex, seg: Segment) -> tuple[float | None, float | None]:
    """(start, duration) in seconds for `open_source`/`upscale` that select exactly `seg`'s frames.

    The source keeps frames with t >= start - tb/2 and stops at t >= start + duration - tb/2; a
    quarter time-base unit past each border keeps float rounding away from both. The first
    segment has no start (decoding begins at the file's start, and nothing is shifted).
    """
    tb = index.time_base
    t0 = float((index.start_time or 0) * tb)
    first = seg.first == 0
    start = None if first else max(0.0, float((seg.start_pts + Fraction(1, 4)) * tb) - t0)
    if seg.end_pts is None:
        return start, None
    end = float((seg.end_pts + Fraction(1, 4)) * tb)
    base = t0 if start is None else t0 + start
    return start, end - base


def part_offset(index: KeyframeIndex, seg: Segment) -> int:
    """How far (input time-base units) `upscale` shifted this part's timestamps toward zero."""
    start, _ = segment_window(index, seg)
    if start is None:
        return 0
    t0 = float((index.start_time or 0) * index.time_base)
    return round((t0 + start) / index.time_base)


def _first_video(container) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise OutputError(f"part {container.name} has no video stream")
    return container.streams.video[0]


def _mux_part(out: av.container.OutputContainer, vs, path: Path, offset: int, start_pts: int, *,
              time_base: Fraction, extradata, copies: CopiedStreams | None,
              last_dts: float) -> tuple[int, float]:
    """Mux one part's video packets into `vs`, shifted back by `offset` to the input's times,
    copied streams interleaved; (packets written, decode time of the last one)."""
    written = 0
    with av.open(ffmpeg_name(path)) as part:
        ps = _first_video(part)
        if ps.codec_context.extradata != extradata:
            raise OutputError(f"part {path.name} was encoded with other codec parameters "
                              f"than the first part; remove the parts folder and start over")
        shift = offset * time_base / ps.time_base
        if shift.denominator != 1:
            log.warning("part %s: offset %s is not a whole number of its time-base units",
                        path.name, shift)
        shift = round(shift)
        first_pts = None
        for packet in part.demux(ps):
            if packet.size == 0:
                continue
            if packet.pts is not None:
                packet.pts += shift
                first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
            if packet.dts is not None:
                packet.dts += shift
                t = float(packet.dts * packet.time_base)
                if t <= last_dts:
                    log.warning("part %s: decode timestamps overlap the previous part",
                                path.name)
                last_dts = t
                if copies is not None:
                    copies.pump(t)
            packet.stream = vs
            out.mux(packet)
            written += 1
        want = start_pts * time_base / ps.time_base
        if first_pts is not None and first_pts != want:
            log.warning("part %s starts at %s, expected %s (time base %s)", path.name,
                        first_pts, want, ps.time_base)
    return written, last_dts


def join_parts(parts: list[tuple[Path, int, int]], dst: str | os.PathLike, *, time_base: Fraction,
               copy_from: str | None = None, rotation: int = 0) -> int:
    """Stream-copy the video of `parts` [(file, offset, start_pts)] into `dst`.

    `offset` (in `time_base` units, the input's) is added back to each part's timestamps, after
    which its first frame must sit at `start_pts`. Audio/subtitles/chapters/metadata come once
    from `copy_from` (the input). Returns the number of video packets (frames) written. `dst`
    is replaced if it exists.
    """
    dst = Path(dst)
    fmt = dst.suffix.lstrip(".").lower()
    try:
        fmt_name = av.format.ContainerFormat(fmt, "w").name
    except (ValueError, av.error.FFmpegError):
        fmt_name = fmt
    opts = {"movflags": "+faststart"} if fmt_name in _FASTSTART_FORMATS or fmt in _FASTSTART_FORMATS else {}
    try:
        out = av.open(ffmpeg_name(dst), "w", container_options=opts)
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        raise OutputError(f"cannot write {dst}: {exc}") from None
    copies = None
    written = 0
    try:
        with av.open(ffmpeg_name(parts[0][0])) as first:
            template = _first_video(first)
            vs = out.add_stream_from_template(template)
            vs.time_base = time_base
            tag_hevc(vs, out.format.name)  # the copy would be tagged hev1 again
            extradata = template.codec_context.extradata
        if rotation:
            vs.set_display_rotation(rotation)
        if copy_from:
            copies = CopiedStreams(out, copy_from, None, None)  # as the file output copies
            out.metadata.update(copies.metadata)
            if copies.chapters:
                try:
                    out.set_chapters(copies.chapters)
                except (av.error.FFmpegError, ValueError, TypeError) as exc:
                    log.warning("could not copy chapters: %s", exc)
        out.start_encoding()
        last_dts = -math.inf
        for path, offset, start_pts in parts:
            done, last_dts = _mux_part(out, vs, path, offset, start_pts, time_base=time_base,
                                       extradata=extradata, copies=copies, last_dts=last_dts)
            written += done
        if copies is not None:
            copies.finish(math.inf)
    except (OSError, av.error.FFmpegError) as exc:
        raise OutputError(f"cannot join parts into {dst}: {exc}") from None
    finally:
        try:
            out.close()
        finally:
            if copies is not None:
                copies.close()
    return written
