"""Side-by-side throughput of the model, the pipeline, a naive loop and plain FFmpeg, in one process.

Absolute frames/s depend on the machine and on whatever else runs on it; the ratios between the
parts, measured in the same run on the same clip, are what carries over. Every part is timed
warm (one untimed call of the same shape first), on the same generated clip (`clip.py`):

- model only (`model.py`): the model on device-resident batches, with the engine's settings
  (precision, channels_last, batch); CUDA is timed with events and one synchronise at the end;
  no I/O;
- pipeline (`pipeline.py`): `streamsr.upscale` end to end, writing a real file;
- naive loop (`naive.py`): decode one frame with PyAV, convert on the CPU, copy, batch 1 in
  fp32, copy back, encode; no overlap, no threads;
- I/O only: the pipeline with a x4 nearest-neighbour stand-in model, against FFmpeg doing the
  same decode + x4 nearest scale + encode (`ffmpeg_ref.py`: PyAV's filter graph, or the
  `ffmpeg` program).

`run.py` runs the parts in order, `report.py` turns them into ratios, the table and JSON;
`sweep.py` times the model over sizes and batches, `backends.py` puts backends side by side.
Timing needs no trained weights: a named config without weights runs with seeded random ones.
"""

from streamsr.bench.backends import BackendRow, BackendsResult, format_backends, run_backends
from streamsr.bench.clip import CLIP_FPS, clip_frames, count_frames, make_clip, texture
from streamsr.bench.config import (
    DEFAULT_FRAMES,
    MIN_IO_FRAMES,
    PARTS,
    SWEEP_BATCHES,
    SWEEP_RESOLUTIONS,
    BenchConfig,
    parse_batches,
    parse_resolution,
)
from streamsr.bench.encoding import codec_options, encode_options, open_encoder
from streamsr.bench.ffmpeg_ref import CONVERSIONS, ffmpeg_scale
from streamsr.bench.machine import Machine, describe_machine
from streamsr.bench.model import NearestX4, bench_model, engine_config, time_model
from streamsr.bench.naive import naive_loop
from streamsr.bench.pipeline import run_pipeline, warm_pipeline
from streamsr.bench.report import (
    SCHEMA,
    BenchResult,
    Ratios,
    SweepPoint,
    SweepResult,
    format_result,
    format_sweep,
    machine_lines,
)
from streamsr.bench.run import run_bench
from streamsr.bench.sweep import run_sweep
from streamsr.bench.timing import Progress, Timing

__all__ = [
    "CLIP_FPS", "CONVERSIONS", "DEFAULT_FRAMES", "MIN_IO_FRAMES", "PARTS", "SCHEMA",
    "SWEEP_BATCHES", "SWEEP_RESOLUTIONS", "BackendRow", "BackendsResult", "BenchConfig",
    "BenchResult", "Machine", "NearestX4", "Progress", "Ratios", "SweepPoint", "SweepResult",
    "Timing", "bench_model", "clip_frames", "codec_options", "count_frames", "describe_machine",
    "encode_options", "engine_config", "ffmpeg_scale", "format_backends", "format_result",
    "format_sweep", "machine_lines", "make_clip", "naive_loop", "open_encoder", "parse_batches",
    "parse_resolution", "run_backends", "run_bench", "run_pipeline", "run_sweep", "texture",
    "time_model", "warm_pipeline",
]
