"""`streamsr bench --sweep`: model-only fps over resolutions x batch sizes, plus the pipeline
once per resolution at the engine's own batch, to see how the cost grows."""

from __future__ import annotations

import copy
import functools
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from streamsr.bench.clip import make_clip
from streamsr.bench.config import DEFAULT_FRAMES, SWEEP_BATCHES, SWEEP_RESOLUTIONS, BenchConfig
from streamsr.bench.encoding import encode_options
from streamsr.bench.machine import describe_machine, now
from streamsr.bench.model import (
    bench_model,
    engine_config,
    engine_info,
    fps_or_oom,
    release,
    time_model,
)
from streamsr.bench.pipeline import run_pipeline, warm_pipeline
from streamsr.bench.report import SweepPoint, SweepResult, notes
from streamsr.bench.timing import Progress, announce
from streamsr.errors import ConfigError
from streamsr.inference.engine import Engine
from streamsr.runtime import resolve_device


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
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="streamsr-sweep-", dir=config.workdir) as tmp:
        work = Path(tmp)
        for width, height in resolutions:
            rows: dict[int, SweepPoint] = {}
            for batch in batches:
                announce(progress, f"model only {width}x{height}, batch {batch}")
                engine = Engine(model, engine_config(config, batch=batch))
                info = engine_info(engine)
                rows[batch] = _model_point(engine, batch, width, height, frames)
                release(engine)
                fps = rows[batch].model_fps
                announce(progress, f"  {fps:.3g} fps" if fps is not None else "  out of memory")
            if pipeline:
                _pipeline_point(config, model, pristine, rows, work, width, height, frames, progress)
            points += [rows[b] for b in sorted(rows)]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    info.pop("batch", None)
    cfg = asdict(config)
    cfg.update(frames=frames, resolutions=[list(r) for r in resolutions], batches=list(batches),
               parts=list(config.parts))
    cfg.pop("resolution", None)
    return SweepResult(date=now(), machine=describe_machine(device), config=cfg, model=model_info,
                       engine=info, points=points, notes=notes(model_info, device))


def _model_point(engine: Engine, batch: int, width: int, height: int, frames: int) -> SweepPoint:
    """Model-only fps of `engine` at one size and batch (None when it ran out of memory)."""
    fps = fps_or_oom(time_model, engine, width, height, max(frames, batch))
    mpx = width * height / 1e6
    return SweepPoint(width=width, height=height, batch=batch, model_fps=fps,
                      ms_per_frame=_ms(fps), ms_per_megapixel=_ms(fps, mpx))


def _pipeline_point(config: BenchConfig, model: nn.Module, pristine: nn.Module,
                    rows: dict[int, SweepPoint], work: Path, width: int, height: int, frames: int,
                    progress: Progress | None) -> None:
    """The pipeline at the engine's own batch for this size; that batch gets a model-only row
    of its own when it was not among the swept ones."""
    engine = Engine(model, engine_config(config))
    engine.plan(height, width)
    batch = engine.batch
    if batch not in rows:
        rows[batch] = _model_point(engine, batch, width, height, frames)
    release(engine)
    announce(progress, f"pipeline {width}x{height}, batch {batch}")
    io = {"decoder": config.decoder, "enc": encode_options(config.codec, config.encoder_preset)}
    pipe = functools.partial(run_pipeline, **io)
    if engine.device.type == "cuda":
        warm_pipeline(work, width, height, min(frames, 2 * batch), copy.deepcopy(pristine),
                      engine_config(config, batch=batch), config.seed, **io)
    clip = make_clip(work / f"clip_{width}x{height}.mp4", width, height, frames, config.seed)
    rows[batch].pipeline_fps = fps_or_oom(pipe, clip, work / "out.mp4", copy.deepcopy(pristine),
                                          engine_config(config, batch=batch))
    pipe_fps = rows[batch].pipeline_fps
    announce(progress, f"  {pipe_fps:.3g} fps" if pipe_fps is not None else "  out of memory")


def _ms(fps: float | None, megapixels: float = 1.0) -> float | None:
    return None if fps is None else 1000.0 / fps / megapixels
