"""`run_bench`: the four parts in order on one generated clip, then the ratios between them.

Order matters: the model-only engine plans first and chooses the batch; the pipeline parts get
that batch (so both run the same shapes) after the engine's CUDA graphs are released; on CUDA
one untimed pipeline run first keeps cuDNN autotuning and compilation out of the timings.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from streamsr.bench.clip import count_frames, make_clip
from streamsr.bench.config import DEFAULT_FRAMES, MIN_IO_FRAMES, BenchConfig
from streamsr.bench.encoding import codec_options, encode_options
from streamsr.bench.ffmpeg_ref import ffmpeg_scale
from streamsr.bench.machine import describe_machine, now
from streamsr.bench.model import (
    NearestX4,
    bench_model,
    engine_config,
    engine_info,
    release,
    time_model,
)
from streamsr.bench.naive import naive_loop
from streamsr.bench.pipeline import run_pipeline, warm_pipeline
from streamsr.bench.report import BenchResult, notes, ratios
from streamsr.bench.timing import Progress, Timing, announce, said
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.runtime import resolve_device
from streamsr.video.encoder import EncodeOptions


@dataclass(frozen=True)
class _Run:
    """What the parts of one run share."""

    config: BenchConfig
    device: torch.device
    work: Path
    clip: Path
    frames: int
    io_frames: int
    pristine: nn.Module  # the model before any engine converted it in place (device, layout)
    engine: EngineConfig  # the pipeline parts': with the batch the model-only engine chose
    enc: EncodeOptions
    progress: Progress | None

    @property
    def pipe(self) -> dict:
        """The pipeline parts' I/O settings."""
        return {"decoder": self.config.decoder, "enc": self.enc}

    def model(self) -> nn.Module:
        return copy.deepcopy(self.pristine)

    def say(self, text: str) -> None:
        announce(self.progress, text)


def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Measure the four parts on one generated clip and return fps, ratios and the machine."""
    config.check()
    device = resolve_device(config.device)
    width, height = config.resolution
    frames = config.frames or DEFAULT_FRAMES[device.type]
    io_frames = config.io_frames or max(frames, MIN_IO_FRAMES)
    model, model_info = bench_model(config.model, config.seed)
    pristine = copy.deepcopy(model)  # the engine converts its model in place (device, layout)
    engine = Engine(model, engine_config(config))
    engine.plan(height, width)
    info = engine_info(engine)
    enc = encode_options(config.codec, config.encoder_preset)
    with tempfile.TemporaryDirectory(prefix="streamsr-bench-", dir=config.workdir) as tmp:
        work = Path(tmp)
        announce(progress, f"making a {width}x{height} clip of {frames} frames")
        clip = make_clip(work / "clip.mp4", width, height, frames, config.seed)
        clip_frames_decoded = count_frames(clip)
        # The pipeline gets the batch the engine chose here, so both run the same shapes.
        run = _Run(config=config, device=device, work=work, clip=clip, frames=frames,
                   io_frames=io_frames, pristine=pristine,
                   engine=engine_config(config, batch=engine.batch), enc=enc, progress=progress)
        results = _measure(run, engine)
    cfg = asdict(config)
    cfg.update(frames=frames, clip_frames=clip_frames_decoded, io_frames=io_frames,
               resolution=[width, height],
               parts=list(config.parts),
               encode={"codec": enc.codec, "pix_fmt": enc.pix_fmt, **codec_options(enc)})
    return BenchResult(date=now(), machine=describe_machine(device), config=cfg, model=model_info,
                       engine=info, results=results, ratios=ratios(results),
                       notes=notes(model_info, device))


def _measure(run: _Run, engine: Engine) -> dict[str, Timing]:
    """The parts the config asks for, in order: model only, pipeline, naive loop, I/O only."""
    parts, (width, height) = set(run.config.parts), run.config.resolution
    results: dict[str, Timing] = {}
    if "model" in parts:
        run.say(f"model only ({run.config.model}, batch {engine.batch})")
        results["model_only"] = time_model(engine, width, height, run.frames)
        run.say(said(results["model_only"]))
    release(engine)  # the pipeline's own engine plans next, on the same GPU
    if run.device.type == "cuda" and {"pipeline", "io"} & parts:
        run.say("warming up the pipeline (untimed)")
        warm_pipeline(run.work, width, height, min(run.frames, 2 * engine.batch), run.model(),
                      run.engine, run.config.seed, **run.pipe)
    if "pipeline" in parts:
        run.say("pipeline (decode -> engine -> encode)")
        results["pipeline"] = run_pipeline(run.clip, run.work / "pipeline.mp4", run.model(),
                                           run.engine, **run.pipe)
        run.say(said(results["pipeline"]))
    if "naive" in parts:
        run.say("naive loop (one frame at a time, fp32)")
        results["naive"] = naive_loop(run.clip, run.work / "naive.mp4", run.model(), run.device,
                                      run.enc)
        run.say(said(results["naive"]))
    if "io" in parts:
        results.update(_io_parts(run))
    return results


def _io_parts(run: _Run) -> dict[str, Timing]:
    """The pipeline with a x4 nearest-neighbour stand-in against FFmpeg doing the same job."""
    width, height = run.config.resolution
    io_clip = run.clip
    if run.io_frames != run.frames:
        run.say(f"making a {width}x{height} clip of {run.io_frames} frames for I/O")
        io_clip = make_clip(run.work / "clip_io.mp4", width, height, run.io_frames, run.config.seed)
    run.say("I/O only: pipeline with a x4 nearest-neighbour stand-in")
    io_pipeline = run_pipeline(io_clip, run.work / "io.mp4", NearestX4(), run.engine, **run.pipe)
    run.say(said(io_pipeline))
    run.say("I/O only: FFmpeg decode + x4 nearest scale + encode")
    io_ffmpeg = ffmpeg_scale(io_clip, run.work / "ffmpeg.mp4", run.enc, run.config.ffmpeg)
    run.say(said(io_ffmpeg))
    # the same with FFmpeg's default (fast, less faithful) YUV<->RGB conversions: a
    # different job, reported beside the ratio so nobody has to take our word for it
    run.say("I/O only: FFmpeg again, with its default conversions")
    fast = ffmpeg_scale(io_clip, run.work / "ffmpeg_fast.mp4", run.enc, run.config.ffmpeg, "default")
    io_ffmpeg.detail["default_conversion"] = {"fps": fast.fps, "seconds": fast.seconds}
    run.say(said(fast))
    return {"io_pipeline": io_pipeline, "io_ffmpeg": io_ffmpeg}
