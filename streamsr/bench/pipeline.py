"""Our pipeline, timed end to end: `streamsr.upscale` on the clip, writing a real file."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from streamsr.bench.clip import count_frames, make_clip
from streamsr.bench.encoding import encode_options
from streamsr.bench.timing import Timing
from streamsr.inference.engine import EngineConfig
from streamsr.video.encoder import EncodeOptions


def run_pipeline(src: Path, dst: Path, model: nn.Module, engine: EngineConfig, *,
                 decoder: str = "software", enc: EncodeOptions | None = None) -> Timing:
    """Wall time of `streamsr.upscale` on the clip, frames counted in its output.

    `fps` is end to end (the whole call: opening, engine set-up, pipeline fill and drain,
    encoder flush); `detail` adds the time until the first frame reached the encoder.
    `decoder` is the pipeline's video decoder (`upscale(decoder=...)`), `enc` its encoder
    settings (default: `encode_options()`).
    """
    enc = enc or encode_options()
    written_at: list[float] = []
    t0 = time.perf_counter()
    stats = _upscale(src, dst, model, engine, decoder, enc,
                     lambda done, total: written_at.append(time.perf_counter()))
    seconds = max(time.perf_counter() - t0, 1e-9)
    written = count_frames(dst)
    detail: dict = {"output_frames": written, "stats_frames": stats.frames}
    if written_at:  # start-up latency; a steady rate from these would mislead, as encoders
        detail["first_frame_s"] = written_at[0] - t0  # buffer frames until the flush
    return Timing(fps=written / seconds, frames=written, seconds=seconds, detail=detail)


def _upscale(src: Path, dst: Path, model: nn.Module, engine: EngineConfig, decoder: str,
             enc: EncodeOptions, progress: Callable[[int, int | None], None]):
    """The one call into the pipeline, with the bench's engine and encoder settings.

    Imported at call time so tests can spy on `streamsr.api.upscale`.
    """
    from streamsr.api import upscale
    from streamsr.options import UpscaleOptions

    options = UpscaleOptions(model=model, engine=engine, encode=enc).replace(decoder=decoder,
                                                                             overwrite=True)
    return upscale(str(src), str(dst), options, handle_signals=False, progress=progress)


def warm_pipeline(work: Path, width: int, height: int, frames: int, model: nn.Module,
                  engine: EngineConfig, seed: int = 0, **options) -> None:
    """One untimed pipeline run on a short clip, so cuDNN autotuning and compilation are not
    timed (`options` as `run_pipeline`'s)."""
    clip = make_clip(work / f"warm_{width}x{height}.mp4", width, height, frames, seed)
    run_pipeline(clip, work / "warm_out.mp4", model, engine, **options)
