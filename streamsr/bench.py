"""Side-by-side throughput of the model, the pipeline, a naive loop and plain FFmpeg, in one process.

Absolute frames/s depend on the machine and on whatever else runs on it; the ratios between the
parts, measured in the same run on the same clip, are what carries over. Every part is timed
warm (one untimed call of the same shape first), on the same generated clip:

- model only: the model on device-resident batches, with the engine's settings (precision,
  channels_last, batch); CUDA is timed with events and one synchronise at the end; no I/O;
- pipeline: `streamsr.pipeline.upscale` end to end, writing a real file;
- naive loop: decode one frame with PyAV, convert on the CPU, copy, batch 1 in fp32, copy back,
  encode; no overlap, no threads;
- I/O only: the pipeline with a x4 nearest-neighbour stand-in model, against FFmpeg doing the
  same decode + x4 nearest scale + encode (PyAV's filter graph, or the `ffmpeg` program).

Timing needs no trained weights: a named config without weights runs with seeded random ones.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import itertools
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import ColorRange
from torch import nn

from streamsr.engine import (
    ALIGN,
    CUDA_GRAPH_MODES,
    Engine,
    EngineConfig,
    available_cpus,
    is_oom,
    resolve_device,
)
from streamsr.errors import ConfigError, WeightsError
from streamsr.models import DeblurSR
from streamsr.models.configs import CONFIGS, get_config
from streamsr.models.weights import load_model
from streamsr.video.sink import EncodeOptions, check_encoder, encoder_options, parse_bitrate
from streamsr.video.source import (
    DECODERS,
    MATRICES,
    RANGES,
    TO_RGB_FLAGS,
    effective_matrix,
    effective_range,
    main_video_stream,
    open_source,
    sws_matrix,
    sws_range,
)

log = logging.getLogger(__name__)

SCHEMA = "streamsr-bench-v1"
PARTS = ("model", "pipeline", "naive", "io")
SWEEP_RESOLUTIONS = ((320, 180), (480, 270), (960, 540))
SWEEP_BATCHES = {"cuda": (1, 2, 4, 8), "cpu": (1, 2, 4)}
DEFAULT_FRAMES = {"cuda": 96, "cpu": 8}
MIN_IO_FRAMES = 48  # the I/O parts are cheap: a longer clip keeps start-up costs from dominating
CLIP_FPS = 25
# FFmpeg reference conversions: the pipeline's swscale settings, or FFmpeg's defaults
CONVERSIONS = ("pipeline", "default")
SWS_TO_RGB = "bicubic+accurate_rnd+full_chroma_int"  # as TO_RGB_FLAGS (video/source.py)
SWS_FROM_RGB = "bicubic+accurate_rnd+full_chroma_inp"  # as FROM_RGB_FLAGS
_SCALE_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "fcc": "fcc",
                 "smpte240m": "smpte240m", "bt2020nc": "bt2020", "bt2020c": "bt2020"}
CLIP_OPTIONS = {"crf": "16", "preset": "veryfast"}  # the source clip: fast to make, detailed
FFMPEG_METHODS = ("auto", "pyav", "cli")

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Configuration and results

@dataclass
class BenchConfig:
    """What to measure: clip size and length, model, engine settings, which parts."""

    resolution: tuple[int, int] = (320, 180)  # (width, height) of the input clip
    frames: int | None = None  # None: 96 on CUDA, 8 on CPU
    io_frames: int | None = None  # frames for the I/O-only parts; None: max(frames, 48)
    model: str = "lite"  # lite | paper | tiny | path to a weights file
    device: str = "auto"
    precision: str = "auto"
    batch: int | None = None  # None: the engine's choice
    compile: bool = False
    cuda_graphs: str = "auto"  # auto | on | off (engine and pipeline; no effect on CPU)
    backend: str = "torch"  # what runs the model (engine and pipeline), see streamsr.backends
    threads: int | None = None  # CPU threads of the engine and pipeline (None: the engine's)
    decoder: str = "software"  # the pipeline parts' video decoder: software | cuda | auto
    codec: str = "libx264"  # encoder of every part that writes video (pipeline, naive, FFmpeg)
    encoder_preset: str = "medium"  # its speed preset (p1-p7 for NVENC)
    parts: tuple[str, ...] = PARTS
    ffmpeg: str = "auto"  # reference for the I/O part: auto (cli if installed), pyav, cli
    seed: int = 0
    workdir: str | None = None  # where clips and outputs go (default: a temp dir, removed after)

    def check(self) -> None:
        """Raise ConfigError for values that cannot be benchmarked."""
        w, h = self.resolution
        if w < 16 or h < 16 or w % 2 or h % 2:
            raise ConfigError(f"resolution must be even and at least 16x16, got {w}x{h}")
        for name in ("frames", "io_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be at least 1, got {value}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ConfigError(f"parts must be among {', '.join(PARTS)}, got {', '.join(self.parts)}")
        if self.ffmpeg not in FFMPEG_METHODS:
            raise ConfigError(f"ffmpeg must be one of {', '.join(FFMPEG_METHODS)}, got {self.ffmpeg}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder}")
        if self.cuda_graphs not in CUDA_GRAPH_MODES:
            raise ConfigError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPH_MODES)}, "
                              f"got {self.cuda_graphs}")
        if self.ffmpeg == "cli" and shutil.which("ffmpeg") is None:
            raise ConfigError("--ffmpeg cli asked for, but no `ffmpeg` program is installed")
        check_encoder(encode_options(self.codec, self.encoder_preset))  # NVENC: can it open?


@dataclass
class Timing:
    """One measured part: `frames` processed in `seconds` (warm), so `fps` = frames / seconds."""

    fps: float
    frames: int
    seconds: float
    detail: dict = field(default_factory=dict)


@dataclass
class Ratios:
    """Quotients of the reported fps (None when a part was not run)."""

    pipeline_over_model: float | None = None
    pipeline_over_naive: float | None = None
    io_over_ffmpeg: float | None = None


@dataclass
class Machine:
    """Where the numbers come from."""

    cpu: str
    cpu_cores: int
    cpus_available: int
    torch_threads: int
    gpu: str | None
    gpu_memory_gib: float | None
    torch: str
    cuda: str | None
    cudnn: int | None
    pyav: str
    ffmpeg: str
    ffmpeg_cli: str | None
    python: str
    platform: str
    load_average: list[float] | None  # 1/5/15-minute load when the run ended (others' work too)


@dataclass
class BenchResult:
    """Everything `streamsr bench` prints, as one JSON-serialisable object."""

    date: str
    machine: Machine
    config: dict
    model: dict  # name, parameters, trained
    engine: dict  # device, precision, batch, channels_last, compile
    results: dict[str, Timing]  # model_only, pipeline, naive, io_pipeline, io_ffmpeg
    ratios: Ratios
    notes: list[str]
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


@dataclass
class SweepPoint:
    """Model-only throughput at one (resolution, batch), with the pipeline's at that resolution."""

    width: int
    height: int
    batch: int
    model_fps: float | None  # None: out of memory
    ms_per_frame: float | None
    ms_per_megapixel: float | None  # cost normalised by LR pixels: flat means linear growth
    pipeline_fps: float | None = None  # only for the engine's own batch at this resolution


@dataclass
class SweepResult:
    """`streamsr bench --sweep`: how the cost grows with resolution and batch."""

    date: str
    machine: Machine
    config: dict
    model: dict
    engine: dict
    points: list[SweepPoint]
    notes: list[str]
    schema: str = SCHEMA + "-sweep"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------------------------------------
# The clip

def texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A detailed, tileable RGB texture (fine noise over coarse blobs and stripes), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        0.5 + 0.25 * np.sin(2 * np.pi * (x / width * 3 + y / height * 2)),
        0.5 + 0.25 * np.cos(2 * np.pi * (x / width * 5 - y / height * 3)),
        0.5 + 0.25 * np.sin(2 * np.pi * (x / width * 2 + y / height * 7)),
    ], axis=2)
    # coarse random blobs: noise on a grid of 8 px cells, nearest-upsampled then box-smoothed
    cells = rng.random((height // 8 + 2, width // 8 + 2, 3), dtype=np.float32)
    blobs = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[:height, :width]
    blobs = (blobs + np.roll(blobs, 4, 0) + np.roll(blobs, 4, 1) + np.roll(blobs, (4, 4), (0, 1))) / 4
    fine = rng.random((height, width, 3), dtype=np.float32)
    img = 0.45 * base + 0.35 * blobs + 0.2 * fine
    return np.ascontiguousarray((img * 255).round().clip(0, 255).astype(np.uint8))


def clip_frames(width: int, height: int, frames: int, seed: int = 0) -> Iterator[np.ndarray]:
    """`frames` RGB frames of the texture panning diagonally (3 px right, 2 px down per frame)."""
    tex = texture(width, height, seed)
    for i in range(frames):
        yield np.ascontiguousarray(np.roll(tex, (2 * i, 3 * i), axis=(0, 1)))


def make_clip(path: str | os.PathLike, width: int, height: int, frames: int, seed: int = 0) -> Path:
    """Write the bench clip: a moving textured pattern, H.264 yuv420p at 25 fps."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(CLIP_OPTIONS)
        for rgb in clip_frames(width, height, frames, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def count_frames(path: str | os.PathLike) -> int:
    """Video frames in a file, counted by decoding (not from the header's estimate)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(main_video_stream(container)))


# ---------------------------------------------------------------------------------------------
# Encoder settings shared by the naive loop and the FFmpeg reference (the sink's defaults)

def encode_options(codec: str | None = None, preset: str | None = None) -> EncodeOptions:
    """The pipeline's default encoder settings (codec, crf, preset, pix_fmt, options), with
    another codec and preset when given."""
    enc = EncodeOptions()
    enc.codec = codec or enc.codec
    enc.preset = preset or enc.preset
    return enc


def codec_options(enc: EncodeOptions) -> dict[str, str]:
    """The encoder options the pipeline's sink passes to FFmpeg for `enc`."""
    return encoder_options(enc)


def open_encoder(path: str | os.PathLike, width: int, height: int, rate: Fraction | int,
                 enc: EncodeOptions) -> tuple[av.container.OutputContainer, av.VideoStream]:
    """An output container with one video stream set up like the pipeline's sink."""
    out = av.open(str(path), "w")
    stream = out.add_stream(enc.codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, enc.pix_fmt
    stream.codec_context.thread_count = 0  # as the sink: FFmpeg picks the thread count
    if enc.bitrate:
        stream.codec_context.bit_rate = parse_bitrate(enc.bitrate)
    stream.codec_context.options = codec_options(enc)
    return out, stream


# ---------------------------------------------------------------------------------------------
# Models

class NearestX4(nn.Module):
    """Stand-in 'model' for the I/O-only run: x4 nearest-neighbour, near-zero compute."""

    scale = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each pixel broadcast to a 4x4 block in one copy: what F.interpolate(mode="nearest")
        # gives, at about half its CPU time (it is the stand-in's only cost, so keep it small)
        n, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(n, c, h, 4, w, 4).reshape(n, c, 4 * h, 4 * w)


def bench_model(name: str, seed: int = 0) -> tuple[nn.Module, dict]:
    """The model to time and a description; named configs without weights get random weights."""
    trained = True
    try:
        model = load_model(name, "cpu")
    except WeightsError:
        if name not in CONFIGS:
            raise
        torch.manual_seed(seed)
        model = DeblurSR(get_config(name)).eval()
        trained = False
    params = sum(p.numel() for p in model.parameters())
    return model, {"name": name, "parameters": params, "trained": trained}


# ---------------------------------------------------------------------------------------------
# The parts

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_call(engine: Engine) -> Callable[[torch.Tensor], torch.Tensor]:
    """The engine's own model call (autocast, channels_last, compile fallback, CUDA graphs)."""
    return engine.model_call  # the exact call the pipeline makes, minus I/O


def time_model(engine: Engine, width: int, height: int, frames: int, warmup: int | None = None) -> Timing:
    """Model-only fps on one device-resident float batch of the engine's size, padded as it pads.

    `warmup` untimed calls first (default: 2 on CUDA, where the first one autotunes cuDNN; 1 on CPU).
    """
    batch = engine.batch
    warmup = warmup if warmup is not None else (2 if engine.device.type == "cuda" else 1)
    ph, pw = -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, ph, pw, generator=gen).to(engine.device)
    forward = _model_call(engine)
    calls = max(1, math.ceil(frames / batch))
    with torch.inference_mode():
        for _ in range(warmup):
            forward(x)
        _sync(engine.device)
        if engine.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                forward(x)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000.0
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                forward(x)
            seconds = time.perf_counter() - t0
    n = calls * batch
    seconds = max(seconds, 1e-9)
    return Timing(fps=n / seconds, frames=n, seconds=seconds,
                  detail={"batch": batch, "calls": calls, "input": [pw, ph]})


def run_pipeline(src: Path, dst: Path, model: nn.Module, engine: EngineConfig, *,
                 decoder: str = "software", enc: EncodeOptions | None = None) -> Timing:
    """Wall time of `streamsr.pipeline.upscale` on the clip, frames counted in its output.

    `fps` is end to end (the whole call: opening, engine set-up, pipeline fill and drain,
    encoder flush); `detail` adds the time until the first frame reached the encoder.
    `decoder` is the pipeline's video decoder (`upscale(decoder=...)`), `enc` its encoder
    settings (default: `encode_options()`).
    """
    from streamsr.pipeline import upscale

    enc = enc or encode_options()
    written_at: list[float] = []
    t0 = time.perf_counter()
    stats = upscale(str(src), str(dst), model=model, device=engine.device,
                    precision=engine.precision, batch=engine.batch, tile=engine.tile,
                    compile=engine.compile, cuda_graphs=engine.cuda_graphs, decoder=decoder,
                    backend=engine.backend, threads=engine.threads,
                    codec=enc.codec, crf=enc.crf, encoder_preset=enc.preset, pix_fmt=enc.pix_fmt,
                    bitrate=enc.bitrate, encoder_options=enc.options, overwrite=True,
                    handle_signals=False,
                    progress=lambda done, total: written_at.append(time.perf_counter()))
    seconds = max(time.perf_counter() - t0, 1e-9)
    written = count_frames(dst)
    detail: dict = {"output_frames": written, "stats_frames": stats.frames}
    if written_at:  # start-up latency; a steady rate from these would mislead, as encoders
        detail["first_frame_s"] = written_at[0] - t0  # buffer frames (x264: ~40) until the flush
    return Timing(fps=written / seconds, frames=written, seconds=seconds, detail=detail)


def warm_pipeline(work: Path, width: int, height: int, frames: int, model: nn.Module,
                  engine: EngineConfig, seed: int = 0, **options) -> None:
    """One untimed pipeline run on a short clip, so cuDNN autotuning and compilation are not
    timed (`options` as `run_pipeline`'s)."""
    clip = make_clip(work / f"warm_{width}x{height}.mp4", width, height, frames, seed)
    run_pipeline(clip, work / "warm_out.mp4", model, engine, **options)


def naive_loop(src: Path, dst: Path, model: nn.Module, device: torch.device,
               enc: EncodeOptions) -> Timing:
    """What a user writes first: one frame at a time, fp32, CPU conversions, no overlap."""
    model = model.to(device).eval()
    with av.open(str(src)) as probe:
        vs = main_video_stream(probe)
        width, height, rate = vs.width, vs.height, vs.average_rate or CLIP_FPS
    with torch.inference_mode():  # warm-up: one call of the same shape, untimed
        model(torch.zeros(1, 3, height, width, device=device))
    _sync(device)
    n = 0
    t0 = time.perf_counter()
    with torch.inference_mode(), av.open(str(src)) as inp:
        out, stream = open_encoder(dst, 4 * width, 4 * height, rate, enc)
        try:
            for frame in inp.decode(main_video_stream(inp)):
                rgb = frame.to_ndarray(format="rgb24")
                x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
                y = model(x.to(device))
                y = y if isinstance(y, torch.Tensor) else y.hr
                hr = y[0].cpu().clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).numpy()
                frame = _stamp(av.VideoFrame.from_ndarray(hr, format="rgb24"), n, rate)
                for packet in stream.encode(frame):
                    out.mux(packet)
                n += 1
            for packet in stream.encode(None):
                out.mux(packet)
        finally:
            out.close()
    seconds = max(time.perf_counter() - t0, 1e-9)
    return Timing(fps=n / seconds, frames=n, seconds=seconds)


def ffmpeg_scale(src: Path, dst: Path, enc: EncodeOptions, method: str = "auto",
                 conversion: str = "pipeline") -> Timing:
    """FFmpeg alone: decode + x4 nearest scale + encode with the pipeline's codec settings.

    `conversion` "pipeline": YUV->RGB and back with the pipeline's own swscale settings (bicubic
    with full chroma interpolation and accurate rounding, the input's matrix and range), so both
    hand the encoder the same pictures. "default": FFmpeg's default (fast) conversions, about
    3 dB less faithful on real photos (see docs/benchmarks.md), whose blockier chroma x264
    also encodes about 20 % faster: a different job, kept as a second figure.
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


def _stamp(frame: av.VideoFrame, index: int, rate: Fraction) -> av.VideoFrame:
    """Frame `index` of a constant-rate clip, with no picture type, ready for the encoder.

    Without real timestamps x264's rate control works from a wrong frame rate (an unstamped run
    came out at 2400 fps, 1.6x smaller and quicker to encode than the pipeline's properly timed
    output). And a decoded frame keeps its I/P/B type through filters, which libx264 obeys: the
    reference then copied the clip's frame types instead of choosing its own (x264 skips its
    B-frame decision, ~20 % less CPU and a 1.5x smaller file than the pipeline's). Both would
    make the references unfair.
    """
    frame.time_base = Fraction(1) / Fraction(rate)
    frame.pts = index
    frame.pict_type = 0  # AV_PICTURE_TYPE_NONE: let the encoder decide
    return frame


def _colour(src: Path) -> tuple[str, str]:
    """The matrix and range the pipeline decodes `src` with (tag, or the size-based default)."""
    with open_source(src) as source:
        return effective_matrix(source.info), effective_range(source.info)


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
        w, h = 4 * ist.width, 4 * ist.height
        rate = ist.average_rate or CLIP_FPS
        graph = av.filter.Graph()
        if same:
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
        out, stream = open_encoder(dst, w, h, rate, enc)
        if same:
            stream.codec_context.colorspace = {v: k for k, v in MATRICES.items()}[matrix]
            stream.codec_context.color_range = {v: k for k, v in RANGES.items()}[colour_range]
        src_matrix, src_range = sws_matrix(matrix), sws_range(colour_range)
        count = itertools.count()
        try:
            def drain() -> None:
                while True:
                    try:
                        frame = graph.vpull()
                    except (BlockingIOError, EOFError):
                        return
                    _stamp(frame, next(count), rate)
                    for packet in stream.encode(frame):
                        out.mux(packet)

            for n, frame in enumerate(inp.decode(ist)):
                if same:  # exactly the pipeline decoder's conversion
                    frame = _stamp(frame.reformat(format="rgb24", src_colorspace=src_matrix,
                                                  src_color_range=src_range,
                                                  dst_color_range=ColorRange.JPEG,
                                                  interpolation=TO_RGB_FLAGS), n, rate)
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
    for key, value in codec_options(enc).items():
        cmd += [f"-{key}", value]
    subprocess.run(cmd + [str(dst)], check=True, timeout=3600)


# ---------------------------------------------------------------------------------------------
# Machine description

def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ffmpeg_cli_version() -> str | None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else exe
    except (OSError, subprocess.SubprocessError):
        return exe


def describe_machine(device: torch.device) -> Machine:
    """CPU/GPU names, core counts and library versions."""
    gpu = mem = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu, mem = props.name, round(props.total_memory / 2**30, 1)
    return Machine(
        cpu=_cpu_name(), cpu_cores=os.cpu_count() or 1, cpus_available=available_cpus(),
        torch_threads=torch.get_num_threads(), gpu=gpu, gpu_memory_gib=mem,
        torch=torch.__version__, cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        pyav=av.__version__, ffmpeg=str(getattr(av, "ffmpeg_version_info", "unknown")),
        ffmpeg_cli=_ffmpeg_cli_version(), python=platform.python_version(),
        platform=platform.platform(), load_average=_load_average())


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# Runs

def _ratio(a: Timing | None, b: Timing | None) -> float | None:
    return a.fps / b.fps if a is not None and b is not None else None


def _engine_config(cfg: BenchConfig, batch: int | None = None) -> EngineConfig:
    return EngineConfig(device=cfg.device, precision=cfg.precision,
                        batch=batch if batch is not None else cfg.batch, compile=cfg.compile,
                        cuda_graphs=cfg.cuda_graphs, backend=cfg.backend, threads=cfg.threads)


def _engine_info(engine: Engine) -> dict:
    return {"backend": engine.backend, "device": str(engine.device),
            "precision": str(engine.dtype).removeprefix("torch."),
            "batch": engine.batch, "channels_last": engine.config.channels_last,
            "compile": engine.config.compile, "cuda_graphs": engine._forward.graphs is not None and engine._forward.graphs.enabled}  # off if capture failed


def _notes(model_info: dict, device: torch.device) -> list[str]:
    notes = []
    if not model_info["trained"]:
        notes.append(f"{model_info['name']}: no trained weights here, so seeded random weights "
                     "were timed; speed does not depend on the weights' values")
    notes.append("absolute fps depend on the machine and its load; the ratios of one run carry over")
    if device.type == "cpu":
        notes.append("CPU run: other processes sharing these cores change absolute fps")
    return notes


def _said(t: Timing) -> str:
    return f"  {t.fps:.3g} fps ({t.frames} frames in {t.seconds:.2f} s)"


def _announce(progress: Progress | None, text: str) -> None:
    log.info("bench: %s", text)
    if progress is not None:
        progress(text)


def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Measure the four parts on one generated clip and return fps, ratios and the machine."""
    config.check()
    device = resolve_device(config.device)
    width, height = config.resolution
    frames = config.frames or DEFAULT_FRAMES[device.type]
    io_frames = config.io_frames or max(frames, MIN_IO_FRAMES)
    model, model_info = bench_model(config.model, config.seed)
    pristine = copy.deepcopy(model)  # the engine converts its model in place (device, layout)
    engine = Engine(model, _engine_config(config))
    engine.plan(height, width)
    engine_info = _engine_info(engine)
    # The pipeline gets the batch the engine chose here, so both run the same shapes.
    pipe_engine = _engine_config(config, batch=engine.batch)
    results: dict[str, Timing] = {}
    with tempfile.TemporaryDirectory(prefix="streamsr-bench-", dir=config.workdir) as tmp:
        work = Path(tmp)
        _announce(progress, f"making a {width}x{height} clip of {frames} frames")
        clip = make_clip(work / "clip.mp4", width, height, frames, config.seed)
        clip_frames_decoded = count_frames(clip)
        enc = encode_options(config.codec, config.encoder_preset)
        pipe = {"decoder": config.decoder, "enc": enc}  # the pipeline parts' I/O settings
        if "model" in config.parts:
            _announce(progress, f"model only ({config.model}, batch {engine.batch})")
            results["model_only"] = time_model(engine, width, height, frames)
            _announce(progress, _said(results["model_only"]))
        _release(engine)  # the pipeline's own engine plans next, on the same GPU
        if device.type == "cuda" and {"pipeline", "io"} & set(config.parts):
            _announce(progress, "warming up the pipeline (untimed)")
            warm_pipeline(work, width, height, min(frames, 2 * engine.batch),
                          copy.deepcopy(pristine), pipe_engine, config.seed, **pipe)
        if "pipeline" in config.parts:
            _announce(progress, "pipeline (decode -> engine -> encode)")
            results["pipeline"] = run_pipeline(clip, work / "pipeline.mp4", copy.deepcopy(pristine),
                                               pipe_engine, **pipe)
            _announce(progress, _said(results["pipeline"]))
        if "naive" in config.parts:
            _announce(progress, "naive loop (one frame at a time, fp32)")
            results["naive"] = naive_loop(clip, work / "naive.mp4", copy.deepcopy(pristine), device, enc)
            _announce(progress, _said(results["naive"]))
        if "io" in config.parts:
            io_clip = clip
            if io_frames != frames:
                _announce(progress, f"making a {width}x{height} clip of {io_frames} frames for I/O")
                io_clip = make_clip(work / "clip_io.mp4", width, height, io_frames, config.seed)
            _announce(progress, "I/O only: pipeline with a x4 nearest-neighbour stand-in")
            results["io_pipeline"] = run_pipeline(io_clip, work / "io.mp4", NearestX4(), pipe_engine,
                                                  **pipe)
            _announce(progress, _said(results["io_pipeline"]))
            _announce(progress, "I/O only: FFmpeg decode + x4 nearest scale + encode")
            results["io_ffmpeg"] = ffmpeg_scale(io_clip, work / "ffmpeg.mp4", enc, config.ffmpeg)
            _announce(progress, _said(results["io_ffmpeg"]))
            # the same with FFmpeg's default (fast, less faithful) YUV<->RGB conversions: a
            # different job, reported beside the ratio so nobody has to take our word for it
            _announce(progress, "I/O only: FFmpeg again, with its default conversions")
            fast = ffmpeg_scale(io_clip, work / "ffmpeg_fast.mp4", enc, config.ffmpeg, "default")
            results["io_ffmpeg"].detail["default_conversion"] = {"fps": fast.fps, "seconds": fast.seconds}
            _announce(progress, _said(fast))
    ratios = Ratios(
        pipeline_over_model=_ratio(results.get("pipeline"), results.get("model_only")),
        pipeline_over_naive=_ratio(results.get("pipeline"), results.get("naive")),
        io_over_ffmpeg=_ratio(results.get("io_pipeline"), results.get("io_ffmpeg")))
    cfg = asdict(config)
    cfg.update(frames=frames, clip_frames=clip_frames_decoded, io_frames=io_frames,
               resolution=[width, height],
               parts=list(config.parts),
               encode={"codec": enc.codec, "pix_fmt": enc.pix_fmt, **codec_options(enc)})
    return BenchResult(date=_now(), machine=describe_machine(device), config=cfg, model=model_info,
                       engine=engine_info, results=results, ratios=ratios,
                       notes=_notes(model_info, device))


def run_sweep(config: BenchConfig, resolutions: Sequence[tuple[int, int]] = SWEEP_RESOLUTIONS,
              batches: Sequence[int] | None = None, pipeline: bool = True,
              progress: Progress | None = None) -> SweepResult:
    """Model-only fps over resolutions x batch sizes, plus the pipeline once per resolution.

    A point that runs out of memory is reported with no fps (None) and the sweep goes on.
    """
    config.check()
    for width, height in resolutions:
        BenchConfig(resolution=(width, height)).check()
    device = resolve_device(config.device)
    batches = tuple(batches or SWEEP_BATCHES[device.type])
    if any(b < 1 for b in batches):
        raise ConfigError(f"batch sizes must be at least 1, got {list(batches)}")
    frames = config.frames or DEFAULT_FRAMES[device.type]
    model, model_info = bench_model(config.model, config.seed)
    pristine = copy.deepcopy(model)
    points: list[SweepPoint] = []
    engine_info: dict = {}
    with tempfile.TemporaryDirectory(prefix="streamsr-sweep-", dir=config.workdir) as tmp:
        work = Path(tmp)
        for width, height in resolutions:
            mpx = width * height / 1e6
            rows: dict[int, SweepPoint] = {}
            for batch in batches:
                _announce(progress, f"model only {width}x{height}, batch {batch}")
                engine = Engine(model, _engine_config(config, batch=batch))
                engine_info = _engine_info(engine)
                fps = _fps_or_oom(time_model, engine, width, height, max(frames, batch))
                _release(engine)
                rows[batch] = SweepPoint(width=width, height=height, batch=batch, model_fps=fps,
                                         ms_per_frame=_ms(fps), ms_per_megapixel=_ms(fps, mpx))
                _announce(progress, f"  {fps:.3g} fps" if fps is not None else "  out of memory")
            if pipeline:
                engine = Engine(model, _engine_config(config))
                engine.plan(height, width)
                batch = engine.batch
                if batch not in rows:
                    fps = _fps_or_oom(time_model, engine, width, height, max(frames, batch))
                    rows[batch] = SweepPoint(width=width, height=height, batch=batch, model_fps=fps,
                                             ms_per_frame=_ms(fps), ms_per_megapixel=_ms(fps, mpx))
                _release(engine)
                _announce(progress, f"pipeline {width}x{height}, batch {batch}")
                io = {"decoder": config.decoder,
                      "enc": encode_options(config.codec, config.encoder_preset)}
                pipe = functools.partial(run_pipeline, **io)
                if device.type == "cuda":
                    warm_pipeline(work, width, height, min(frames, 2 * batch), copy.deepcopy(pristine),
                                  _engine_config(config, batch=batch), config.seed, **io)
                clip = make_clip(work / f"clip_{width}x{height}.mp4", width, height, frames, config.seed)
                rows[batch].pipeline_fps = _fps_or_oom(pipe, clip, work / "out.mp4",
                                                       copy.deepcopy(pristine),
                                                       _engine_config(config, batch=batch))
                pipe_fps = rows[batch].pipeline_fps
                _announce(progress, f"  {pipe_fps:.3g} fps" if pipe_fps is not None else "  out of memory")
            points += [rows[b] for b in sorted(rows)]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    engine_info.pop("batch", None)
    cfg = asdict(config)
    cfg.update(frames=frames, resolutions=[list(r) for r in resolutions], batches=list(batches),
               parts=list(config.parts))
    cfg.pop("resolution", None)
    return SweepResult(date=_now(), machine=describe_machine(device), config=cfg, model=model_info,
                       engine=engine_info, points=points, notes=_notes(model_info, device))


def _release(engine: Engine) -> None:
    """Give back the memory an engine's CUDA graphs hold before another engine plans."""
    engine.release_graphs()
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()


def _fps_or_oom(measure: Callable[..., Timing], *args) -> float | None:
    """fps of `measure(*args)`, or None when it ran out of memory (logged)."""
    try:
        return measure(*args).fps
    except Exception as exc:
        if not is_oom(exc):
            raise
        log.warning("out of memory: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return None


def _ms(fps: float | None, megapixels: float = 1.0) -> float | None:
    return None if fps is None else 1000.0 / fps / megapixels


def parse_batches(text: str | None) -> tuple[int, ...] | None:
    """'1,2,4' -> (1, 2, 4); None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"batches must look like 1,2,4, got {text!r}") from None


# ---------------------------------------------------------------------------------------------
# Text

_ROWS = (("model_only", "model only"), ("pipeline", "pipeline"), ("naive", "naive loop"),
         ("io_pipeline", "I/O only: pipeline, x4 nearest"), ("io_ffmpeg", "I/O only: FFmpeg"))


def _fmt_fps(fps: float) -> str:
    return f"{fps:.3g}" if fps < 100 else f"{fps:.0f}"


def machine_lines(m: Machine) -> list[str]:
    load = f", load {m.load_average[0]:.1f}" if m.load_average else ""
    lines = [f"CPU: {m.cpu} ({m.cpus_available} of {m.cpu_cores} cores available, "
             f"{m.torch_threads} torch threads{load})"]
    if m.gpu:
        lines.append(f"GPU: {m.gpu} ({m.gpu_memory_gib} GiB), CUDA {m.cuda}, cuDNN {m.cudnn}")
    lines.append(f"torch {m.torch}, PyAV {m.pyav} (FFmpeg {m.ffmpeg})"
                 + (f", {m.ffmpeg_cli}" if m.ffmpeg_cli else "") + f", Python {m.python}")
    return lines


def format_result(r: BenchResult) -> str:
    """The bench table: fps per part, the three ratios, the machine and the settings."""
    c, e = r.config, r.engine
    w, h = c["resolution"]
    weights = "trained" if r.model["trained"] else "untrained"
    head = [f"streamsr bench, {r.date}",
            f"{r.model['name']} ({r.model['parameters']:,} params, {weights} weights), "
            f"{w}x{h} -> {4 * w}x{4 * h}, {c['frames']} frames, {e.get('backend', 'torch')} on "
            f"{e['device']} {e['precision']}, "
            f"batch {e['batch']}, channels_last {e['channels_last']}, compile {e['compile']}, "
            f"CUDA graphs {'on' if e.get('cuda_graphs') else 'off'}, "
            f"decoder asked {c.get('decoder', 'software')}, encoder {c['encode']['codec']} "
            f"(preset {c['encode'].get('preset', 'default')})",
            *machine_lines(r.machine), ""]
    table = ["| part | fps | frames | seconds |", "|---|---:|---:|---:|"]
    for key, label in _ROWS:
        t = r.results.get(key)
        if t is not None:
            extra = f" ({t.detail['method']})" if "method" in t.detail else ""
            table.append(f"| {label}{extra} | {_fmt_fps(t.fps)} | {t.frames} | {t.seconds:.2f} |")
    ratios = [("pipeline / model only", r.ratios.pipeline_over_model),
              ("pipeline / naive loop", r.ratios.pipeline_over_naive),
              ("I/O: pipeline / FFmpeg", r.ratios.io_over_ffmpeg)]
    ratios = [(name, value) for name, value in ratios if value is not None]
    if ratios:
        table += ["", "| ratio | value |", "|---|---:|"]
        table += [f"| {name} | {value:.2f} |" for name, value in ratios]
    fast = r.results["io_ffmpeg"].detail.get("default_conversion") if "io_ffmpeg" in r.results else None
    if fast and r.results.get("io_pipeline"):
        table += ["", f"FFmpeg with its default (fast, less faithful) YUV<->RGB conversions instead "
                      f"of the pipeline's: {_fmt_fps(fast['fps'])} fps (pipeline / that: "
                      f"{r.results['io_pipeline'].fps / fast['fps']:.2f})"]
    return "\n".join(head + table + [""] + [f"note: {n}" for n in r.notes])


def format_sweep(s: SweepResult) -> str:
    """The sweep table: fps, ms/frame and ms per LR megapixel, cost relative to the first point."""
    head = [f"streamsr bench --sweep, {s.date}",
            f"{s.model['name']} ({s.model['parameters']:,} params), {s.engine.get('device')} "
            f"{s.engine.get('precision')}, {s.config['frames']} frames per point",
            *machine_lines(s.machine), ""]
    table = ["| input | batch | model fps | ms/frame | ms per LR Mpx | cost vs first | pipeline fps |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = next((p.ms_per_frame for p in s.points if p.ms_per_frame), None)

    def cell(value: float | None, fmt: str) -> str:
        return "OOM" if value is None else format(value, fmt)

    for p in s.points:
        pipe = _fmt_fps(p.pipeline_fps) if p.pipeline_fps is not None else ""
        rel = f"{p.ms_per_frame / base:.2f}x" if p.ms_per_frame and base else ""
        fps = _fmt_fps(p.model_fps) if p.model_fps is not None else "OOM"
        table.append(f"| {p.width}x{p.height} | {p.batch} | {fps} | {cell(p.ms_per_frame, '.1f')} | "
                     f"{cell(p.ms_per_megapixel, '.0f')} | {rel} | {pipe} |")
    return "\n".join(head + table + [""] + [f"note: {n}" for n in s.notes])


def parse_resolution(text: str) -> tuple[int, int]:
    """'320x180' -> (320, 180)."""
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ConfigError(f"resolution must look like 320x180, got {text!r}") from None
    return w, h
