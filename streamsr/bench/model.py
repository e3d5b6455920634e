"""Model-only timing: the engine's own model call on device-resident batches, no I/O.

Also the models the parts time (a named config without weights gets seeded random ones; speed
does not depend on the weights' values) and the I/O-only stand-in, `NearestX4`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from streamsr.bench.config import BenchConfig
from streamsr.bench.timing import Timing, sync
from streamsr.errors import WeightsError
from streamsr.inference.engine import Engine, EngineConfig
from streamsr.inference.memory import ALIGN, is_oom
from streamsr.models import DeblurSR
from streamsr.models.configs import CONFIGS, get_config
from streamsr.models.weights import load_model

log = logging.getLogger(__name__)


class NearestX4(nn.Module):
    """Stand-in 'model' for the I/O-only run: x4 nearest-neighbour, near-zero compute."""

    scale = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each pixel broadcast to a 4x4 block in one copy: what F.interpolate(mode="nearest")
        # gives, in less CPU time (it is the stand-in's only cost, so keep it small)
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


def engine_config(cfg: BenchConfig, batch: int | None = None) -> EngineConfig:
    """The engine settings of a bench run (`batch` overrides the config's)."""
    return EngineConfig(device=cfg.device, precision=cfg.precision,
                        batch=batch if batch is not None else cfg.batch, compile=cfg.compile,
                        cuda_graphs=cfg.cuda_graphs, backend=cfg.backend, threads=cfg.threads)


def engine_info(engine: Engine) -> dict:
    """What the engine chose (device, precision, batch, layout), as the report prints it."""
    graphs = engine._forward.graphs  # off if capture failed
    return {"backend": engine.backend, "device": str(engine.device),
            "precision": getattr(engine._forward, "precision", None) if engine.backend != "torch"
            else str(engine.dtype).removeprefix("torch."),  # a backend's own name: int8 too
            "batch": engine.batch, "channels_last": engine.config.channels_last,
            "compile": engine.config.compile,
            "cuda_graphs": graphs is not None and graphs.enabled}


def release(engine: Engine) -> None:
    """Give back the memory an engine's CUDA graphs hold before another engine plans."""
    engine.release_graphs()
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()


def time_model(engine: Engine, width: int, height: int, frames: int, warmup: int | None = None) -> Timing:
    """Model-only fps on one device-resident float batch of the engine's size, padded as it pads.

    `warmup` untimed calls first (default: 2 on CUDA, where the first one autotunes cuDNN; 1 on CPU).
    The call timed is the engine's own (autocast, channels_last, compile fallback, CUDA graphs):
    the exact call the pipeline makes, minus I/O.
    """
    batch = engine.batch
    warmup = warmup if warmup is not None else (2 if engine.device.type == "cuda" else 1)
    ph, pw = -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, ph, pw, generator=gen).to(engine.device)
    forward = engine.model_call
    calls = max(1, math.ceil(frames / batch))
    with torch.inference_mode():
        for _ in range(warmup):
            forward(x)
        sync(engine.device)
        seconds = _time_calls(forward, x, calls, engine.device)
    n = calls * batch
    seconds = max(seconds, 1e-9)
    return Timing(fps=n / seconds, frames=n, seconds=seconds,
                  detail={"batch": batch, "calls": calls, "input": [pw, ph]})


def _time_calls(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, calls: int,
                device: torch.device) -> float:
    """Seconds for `calls` calls: CUDA events and one synchronise at the end on a GPU (no
    per-call host stalls), the wall clock on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            forward(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    for _ in range(calls):
        forward(x)
    return time.perf_counter() - t0


def fps_or_oom(measure: Callable[..., Timing], *args) -> float | None:
    """fps of `measure(*args)`, or None when it ran out of memory (logged)."""
    try:
        return measure(*args).fps
    except Exception as exc:
        if not is_oom(exc):
            raise
        log.warning("out of memory: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return None
