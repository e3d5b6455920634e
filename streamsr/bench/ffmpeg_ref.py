"""The FFmpeg transcode reference for the I/O-only ratio: decode + x4 nearest scale + encode,
with the pipeline's codec settings, either through PyAV's filter graph or the `ffmpeg` program.

By default both conversions (YUV->RGB and back) use the pipeline's own swscale settings and the
input's matrix and range, so the reference hands the encoder the same pictures the pipeline
does; FFmpeg's default (fast, less faithful) conversions are a cheaper, different job, kept as a
second figure (the measured difference is in docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
import logging
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import ColorRange

from streamsr.bench import encoding
from streamsr.bench.clip import CLIP_FPS, count_frames
from streamsr.bench.timing import Timing
from streamsr.errors import ConfigError
from streamsr.video.color import (
    ColorInfo,
    effective_matrix,
    effective_range,
    sws_matrix,
    sws_range,
    tag_color,
)
from streamsr.video.encoder import EncodeOptions, parse_bitrate
from streamsr.video.ffmpeg import TO_RGB_FLAGS, main_video_stream
from streamsr.video.source import open_source

log = logging.getLogger(__name__)

# FFmpeg reference conversions: the pipeline's swscale settings, or FFmpeg's defaults
CONVERSIONS = ("pipeline", "default")
SWS_TO_RGB = "bicubic+accurate_rnd+full_chroma_int"  # as TO_RGB_FLAGS (video/ffmpeg.py)
SWS_FROM_RGB = "bicubic+accurate_rnd+full_chroma_inp"  # as FROM_RGB_FLAGS
_SCALE_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "fcc": "fcc",
                 "smpte240m": "smpte240m", "bt2020nc": "bt2020", "bt2020c": "bt2020"}


def ffmpeg_scale(src: Path, dst: Path, enc: EncodeOptions, method: str = "auto",
                 conversion: str = "pipeline") -> Timing:
    """FFmpeg alone: decode + x4 nearest scale + encode with the pipeline's codec settings.

    `conversion` "pipeline": YUV->RGB and back with the pipeline's own swscale settings (bicubic
    with full chroma interpolation and accurate rounding, the input's matrix and range), so both
    hand the encoder the same pictures. "default": FFmpeg's default (fast) conversions, less
    faithful on real photos, whose blockier chroma x264 also encodes faster: a different job,
    kept as a second figure (docs/benchmarks.md has the numbers).
    `method` "auto" runs the `ffmpeg` program when installed and falls back to PyAV's filter
    graph if it fails.
    """
    if conversion not in CONVERSIONS:
        raise ConfigError(f"conversion must be one of {', '.join(CONVERSIONS)}, not {conversion!r}")
    fallback = method == "auto"
    if method == "auto":
        method = "cli" if shutil.which("ffmpeg") else "pyav"
    t0 = time.perf_counter()
    if method == "cli":
        try:
            _ffmpeg_cli(src, dst, enc, conversion)
        except (OSError, subprocess.SubprocessError) as exc:
            if not fallback:
                raise ConfigError(f"the ffmpeg program failed: {exc}") from None
            log.warning("the ffmpeg program failed (%s); using PyAV's filter graph instead", exc)
            method = "pyav"
            t0 = time.perf_counter()
    if method == "pyav":
        _ffmpeg_graph(src, dst, enc, conversion)
    seconds = max(time.perf_counter() - t0, 1e-9)
    n = count_frames(dst)
    name = "ffmpeg program" if method == "cli" else "PyAV filter graph"
    return Timing(fps=n / seconds, frames=n, seconds=seconds,
                  detail={"method": name, "conversion": conversion})


def _colour(src: Path) -> tuple[str, str]:
    """The matrix and range the pipeline decodes `src` with (tag, or the size-based default)."""
    with open_source(src) as source:
        return effective_matrix(source.info), effective_range(source.info)


def _filter_graph(ist: av.VideoStream, enc: EncodeOptions, rate: Fraction, matrix: str,
                  colour_range: str) -> av.filter.Graph:
    """x4 nearest scale into the encoder's format; with a matrix ("pipeline" conversion) the
    graph takes RGB24 frames and converts back with the sink's swscale flags, without one it
    takes decoded frames and converts with FFmpeg's defaults."""
    w, h = 4 * ist.width, 4 * ist.height
    graph = av.filter.Graph()
    if matrix:
        head = [graph.add_buffer(width=ist.width, height=ist.height, format="rgb24",
                                 time_base=Fraction(1) / Fraction(rate))]
        back = [graph.add("scale", f"flags={SWS_FROM_RGB}:out_color_matrix="
                                   f"{_SCALE_MATRIX.get(matrix, 'bt601')}:out_range={colour_range}")]
    else:
        head = [graph.add_buffer(template=ist), graph.add("format", "rgb24")]
        back = []
    chain = [*head, graph.add("scale", f"{w}:{h}:flags=neighbor"), *back,
             graph.add("format", enc.pix_fmt), graph.add("buffersink")]
    for a, b in zip(chain, chain[1:], strict=False):
        a.link_to(b)
    graph.configure()
    return graph


def _ffmpeg_graph(src: Path, dst: Path, enc: EncodeOptions, conversion: str = "pipeline") -> None:
    """decode -> RGB24 -> scale=4x:flags=neighbor -> encoder format -> encode, inside libav.

    With the pipeline's conversion the YUV->RGB step is the very swscale call the pipeline's
    decoder makes (`frame.reformat`, same flags, matrix and range); RGB->YUV is the filter
    graph's scaler with the flags the pipeline's RGB hand-over uses.
    """
    same = conversion == "pipeline"
    matrix, colour_range = _colour(src) if same else ("", "")
    with av.open(str(src)) as inp:
        ist = main_video_stream(inp)
        ist.thread_type = "AUTO"
        rate = ist.average_rate or CLIP_FPS
        graph = _filter_graph(ist, enc, rate, matrix, colour_range)
        out, stream = encoding.open_encoder(dst, 4 * ist.width, 4 * ist.height, rate, enc)
        if same:  # tagged with what its pictures were converted with, as the sink tags
            tag_color(stream.codec_context, ColorInfo(matrix=matrix, range=colour_range))
        src_matrix, src_range = sws_matrix(matrix), sws_range(colour_range)
        count = itertools.count()
        try:
            def drain() -> None:
                while True:
                    try:
                        frame = graph.vpull()
                    except (BlockingIOError, EOFError):
                        return
                    encoding.stamp(frame, next(count), rate)
                    for packet in stream.encode(frame):
                        out.mux(packet)

            for n, frame in enumerate(inp.decode(ist)):
                if same:  # exactly the pipeline decoder's conversion
                    frame = encoding.stamp(frame.reformat(
                        format="rgb24", src_colorspace=src_matrix, src_color_range=src_range,
                        dst_color_range=ColorRange.JPEG, interpolation=TO_RGB_FLAGS), n, rate)
                graph.vpush(frame)
                drain()
            graph.vpush(None)
            drain()
            for packet in stream.encode(None):
                out.mux(packet)
        finally:
            out.close()


def _ffmpeg_cli(src: Path, dst: Path, enc: EncodeOptions, conversion: str = "pipeline") -> None:
    """The same through the `ffmpeg` program (the conversions as scale filters with the
    pipeline's swscale flags, matrix and range)."""
    if conversion == "pipeline":
        matrix, colour_range = _colour(src)
        m = _SCALE_MATRIX.get(matrix, "bt601")
        chain = (f"scale=flags={SWS_TO_RGB}:in_color_matrix={m}:in_range={colour_range},format=rgb24,"
                 f"scale=iw*4:ih*4:flags=neighbor,scale=flags={SWS_FROM_RGB}:out_color_matrix={m}:"
                 f"out_range={colour_range},format={enc.pix_fmt}")
    else:
        chain = f"format=rgb24,scale=iw*4:ih*4:flags=neighbor,format={enc.pix_fmt}"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
           "-vf", chain, "-an", "-c:v", enc.codec, "-pix_fmt", enc.pix_fmt]
    if enc.bitrate:
        cmd += ["-b:v", str(parse_bitrate(enc.bitrate))]
    for key, value in encoding.codec_options(enc).items():
        cmd += [f"-{key}", value]
    subprocess.run(cmd + [str(dst)], check=True, timeout=3600)
