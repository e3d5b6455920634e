"""Runs a x4 model on batches of uint8 frames, as fast as the device allows, losing nothing.

Frames travel as uint8 NHWC; conversion to float, normalisation, padding, channels_last,
rounding back to uint8 all happen on the device as whole-batch torch ops. On CUDA `map()`
double-buffers through pinned host memory and a separate copy stream ordered by events, so the
copy of batch n+1 and the read-back of batch n-1 overlap the model on batch n (pinned.py). On
CPU the same engine runs as a plain loop. Batch and tile sizes follow free memory; an
out-of-memory error retries the same frames with half the batch, then with smaller tiles, and
never drops a frame (memory.py). High-bit-depth frames travel as uint16 NHWC (x / 65535) and
come back as uint16; on CUDA they run one batch at a time, outside the uint8 pinned ring. On
CUDA, full batches of the planned size replay a captured CUDA graph of the model call
(`cuda_graphs`, graphs.py), so hundreds of small kernels launch as one; other shapes run eagerly.

The output layout is the caller's choice, per call: RGB, or yuv420p planes for an encoder that
takes them (`yuv420`, pack.py).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from streamsr.errors import ConfigError
from streamsr.inference.backends import check_int8, make_forward, resolve_backend, split_int8
from streamsr.inference.batch import FrameBatch, check_frames
from streamsr.inference.forward import TorchForward
from streamsr.inference.graphs import resolve_cuda_graphs
from streamsr.inference.memory import (
    ALIGN,
    CPU_BATCH,
    MemoryPlan,
    is_oom,
    measure_bytes_per_pixel,
    padded,
)
from streamsr.inference.output_size import OutputSize
from streamsr.inference.pack import Yuv420, to_rgb24, to_rgb48, to_yuv420p
from streamsr.inference.pinned import map_pinned
from streamsr.inference.tiling import run_tiled
from streamsr.models.mprnet import pad_to_multiple
from streamsr.runtime import cpu_threads_fixed, resolve_device, resolve_precision, use_cpu_threads

log = logging.getLogger(__name__)

TILE_FEATHER = 1.0  # cross-fade tiles over this fraction of the overlap (see streamsr.inference.tiling)

__all__ = ["ALIGN", "Engine", "EngineConfig", "is_oom", "model_scale"]


@dataclass(frozen=True)
class EngineConfig:
    """How to run the model: device, precision, batch/tile sizes (None: chosen from memory)."""

    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    # "auto" (bf16 / fp16 on CUDA, fp32 on CPU), "bf16", "fp16", "fp32"; "int8": openvino only
    precision: str = "auto"
    batch: int | None = None  # frames per model call; None: from free memory (CPU: 4)
    tile: int | None = None  # tile core size in LR px; None: only when a frame does not fit; 0: never
    tile_overlap: int = 16  # LR px of context on each side of a tile, cropped when stitching
    channels_last: bool = True
    compile: bool = False  # torch.compile, falling back to eager (logged) if it fails
    # what runs the model: torch, openvino, onnxruntime (CPU), tensorrt (CUDA), auto (see
    # streamsr/inference/backends/__init__.py for the rule)
    backend: str = "torch"
    threads: int | None = None  # CPU: torch threads (None: all CPUs, or --threads / OMP_NUM_THREADS)
    # CUDA graphs for full batches: "auto" (on for CUDA without compile), "on", "off"; no-op on CPU
    cuda_graphs: str = "auto"


def model_scale(model: torch.nn.Module) -> int:
    """The model's upscaling factor: `model.config.scale`, else `model.scale`, else 4."""
    cfg = getattr(model, "config", None)
    scale = getattr(cfg, "scale", None) if cfg is not None else None
    if scale is None:
        scale = getattr(model, "scale", 4)
    return int(scale)


def _check_config(config: EngineConfig) -> None:
    if config.batch is not None and config.batch < 1:
        raise ConfigError(f"batch must be at least 1, got {config.batch}")
    if config.tile is not None and 0 < config.tile < ALIGN:
        raise ConfigError(f"tile must be 0 (off) or at least {ALIGN} px, got {config.tile}")
    if config.tile_overlap < 0:
        raise ConfigError(f"tile overlap must be >= 0, got {config.tile_overlap}")


class Engine:
    """uint8 (or uint16) NHWC frames in, the same dtype x `scale` out, batched on the device."""

    def __init__(self, model: torch.nn.Module, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        _check_config(config)
        self.device = resolve_device(config.device)
        precision, int8 = split_int8(config.precision)
        self.dtype = resolve_precision(precision, self.device)
        self.scale = model_scale(model)
        threads = use_cpu_threads(config.threads) if self.device.type == "cpu" else 0
        # the user's count is kept; otherwise the pipeline measures 1 thread against all
        self.threads_fixed = config.threads is not None or cpu_threads_fixed()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick kernels
        model = model.eval().to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        graphs = resolve_cuda_graphs(config.cuda_graphs, self.device, config.compile)
        self.backend = resolve_backend(config.backend, self.device)
        if int8:
            check_int8(self.backend)
        if self.backend == "torch":
            self._forward = TorchForward(model, self.device, self.dtype, config.channels_last,
                                         config.compile, graphs)
        else:  # the exported model on a runtime, behind the same call (streamsr/inference/backends/)
            if config.compile:
                raise ConfigError("--compile applies to the torch backend only")
            graphs = False
            self._forward = make_forward(self.backend, model, self.device, self.dtype,
                                         threads or 1, int8=int8)
            self.threads_fixed = True  # the runtime's own threads: torch's count is no lever
        # On CPU a batch only helps by giving more threads parallel work: with one free thread,
        # larger batches ran slower (docs/architecture.md), so no more frames than threads.
        self._cpu_batch = min(CPU_BATCH, threads) if threads else CPU_BATCH
        self.batch = config.batch or (self._cpu_batch if self.device.type == "cpu" else 8)
        # None: outputs are x scale; else downscaled on the device to this rule's size (the
        # pipeline sets it for --outscale/--size, see streamsr/inference/output_size.py)
        self.output_size: OutputSize | None = None
        # wall time spent in upscale_batch and frames done there (see inference/cpu_threads.py)
        self.busy_seconds, self.frames_done = 0.0, 0
        self._bytes_per_px: float | None = None  # activation memory per LR pixel, measured once
        self._memory = MemoryPlan(self.device, batch=config.batch, tile=config.tile,
                                  tile_overlap=config.tile_overlap, cpu_batch=self._cpu_batch)
        log.info("engine: %s, %s, %s, batch %d, scale %d, compile %s, CUDA graphs %s",
                 self.backend, self.device, str(self.dtype).removeprefix("torch."), self.batch,
                 self.scale, config.compile, "on" if graphs else "off")

    # -- planning ---------------------------------------------------------------------------

    def plan(self, height: int, width: int) -> int:
        """Choose batch (and tile) for frames of this size from free memory; returns the batch.

        The pipeline calls this once it knows the frame size so that its batcher sends batches
        the device can hold; `upscale_batch` and `map` also split larger batches themselves.
        """
        chunk, tile = self._plan(height, width)
        if self.config.batch is None:
            self.batch = chunk if self.device.type == "cuda" else min(self._cpu_batch, chunk)
        log.info("plan for %dx%d: batch %d, tile %s", width, height, self.batch, tile or "off")
        if not tile:
            self._capture_graph(height, width, chunk)
        return self.batch

    def _plan(self, height: int, width: int) -> tuple[int, int]:
        """(frames per model call, tile size or 0) for frames of this size."""
        return self._memory.plan(height, width, self.bytes_per_pixel)

    def _capture_graph(self, height: int, width: int, chunk: int) -> None:
        """Capture the full batch's CUDA graph now, before frames flow: a capture synchronises
        the device once, and the pinned ring's loop never should. Out of memory here only
        postpones it to the run, where the batch may shrink first."""
        graphs = self._forward.graphs
        if graphs is None or not graphs.enabled:
            return
        # laid out as `_run` makes its input: NHWC frames permuted to NCHW
        x = torch.zeros(chunk, *padded(height, width), 3, device=self.device).permute(0, 3, 1, 2)
        try:
            with torch.inference_mode():
                graphs.capture(self._forward, x)
        except Exception as exc:
            if not is_oom(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.info("no memory to capture a CUDA graph of %d frames of %dx%d yet", chunk, width,
                     height)

    def bytes_per_pixel(self) -> float:
        """Activation memory per LR pixel of one frame, from a trial run (measured once)."""
        if self._bytes_per_px is None:
            self._bytes_per_px = measure_bytes_per_pixel(self._forward, self.model, self.device)
            log.info("model needs ~%.0f bytes of activations per input pixel", self._bytes_per_px)
        return self._bytes_per_px

    # -- running ----------------------------------------------------------------------------

    def upscale_batch(self, frames: np.ndarray, yuv420: Yuv420 | None = None) -> np.ndarray:
        """uint8 (N, H, W, 3) -> uint8 (N, sH, sW, 3), uint16 -> uint16; one (H, W, 3) frame too.

        `yuv420`: uint8 results come back as (N, 3sH/2, sW) yuv420p planes in that matrix and
        range instead, when both output sides are even (see pack.py).
        """
        single = frames.ndim == 3
        batch = check_frames(frames[None] if single else frames)
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            y = self._infer(x, yuv420)
            out = y.cpu().numpy()
        self.busy_seconds += time.perf_counter() - t0
        self.frames_done += len(batch)
        return out[0] if single else out

    def map(self, batches: Iterable[FrameBatch | np.ndarray],
            yuv420: Yuv420 | None = None) -> Iterator[FrameBatch | np.ndarray]:
        """`upscale_batch` over an iterable, pipelined; yields one result per batch, in order.

        A `FrameBatch` comes back as a `FrameBatch` with the same frames, the output pixels and
        their layout; a plain array comes back as a plain array. `yuv420`: as `upscale_batch`.
        """
        for batch, plain in self._map(_as_frame_batches(batches), yuv420):
            yield batch.pixels if plain else batch

    def _map(self, batches: Iterator[tuple[FrameBatch, bool]],
             yuv420: Yuv420 | None) -> Iterator[tuple[FrameBatch, bool]]:
        first = next(batches, None)
        if first is None:
            return
        batches = itertools.chain([first], batches)
        if self.device.type != "cuda" or first[0].pixels.dtype != np.uint8:
            # CPU, or uint16 (high bit depth) on CUDA: one batch at a time, no pinned ring
            for batch, plain in batches:
                yield batch.with_pixels(self.upscale_batch(batch.pixels, yuv420)), plain
            return
        plain: list[bool] = []  # each batch's kind, in order, for the ring's results

        def unwrap() -> Iterator[FrameBatch]:
            for batch, kind in batches:
                plain.append(kind)
                yield batch

        for n, out in enumerate(map_pinned(unwrap(), lambda x: self._infer(x, yuv420), self.device)):
            yield out, plain[n]

    def _infer(self, frames: Tensor, yuv420: Yuv420 | None = None) -> Tensor:
        """uint8/uint16 NHWC on the device -> the same x scale on the device, whatever memory allows.

        Frames go through in chunks of the planned size. On out-of-memory the same frames are
        retried with half the chunk, down to one frame, then with ever smaller tiles; the
        smaller sizes are remembered for the following batches. No frame is ever dropped.
        """
        n, h, w, _ = frames.shape
        self._plan(h, w)
        key = padded(h, w)
        memory = self._memory
        outs = []
        start = 0
        while start < n:
            part = frames[start:start + memory.chunk[key]]
            try:
                outs.append(self._run(part, memory.tiles[key], yuv420))
                start += part.shape[0]
                continue
            except Exception as exc:
                if not is_oom(exc):
                    raise
            # graphs captured for the larger batch hold their memory pools: free them (the new
            # size is captured when it first runs)
            self.release_graphs()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            memory.shrink(key, part.shape[0], w, h)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _run(self, frames: Tensor, tile: int, yuv420: Yuv420 | None = None) -> Tensor:
        """One model call (or one tiled pass) with all conversions on the device."""
        n, h, w, _ = frames.shape
        # Pad to a multiple of 8 (reflect, exactly as DeblurSR pads itself), tiled or not, so a
        # tiled frame sees the same borders as a whole one and tile starts can be aligned.
        deep = frames.dtype == torch.uint16
        x = pad_to_multiple(frames.permute(0, 3, 1, 2).float().div_(65535.0 if deep else 255.0), ALIGN)
        key = (x.shape[2], x.shape[3])
        if tile:
            overlap = self.config.tile_overlap
            y = run_tiled(self._forward, x, tile=tile, overlap=overlap, scale=self.scale,
                          feather=round(overlap * TILE_FEATHER),
                          tiles_per_call=self._memory.tiles_per_call[key], align=ALIGN)
        else:
            y = self.model_call(self._fixed_batch(x, self._memory.chunk[key]))[:n]
        s = self.scale
        y = y[:, :, : s * h, : s * w]
        if self.output_size is not None:
            y = self.output_size.resize(y, w, h, s)
        if deep:
            return to_rgb48(y)
        if yuv420 is not None and y.shape[2] % 2 == 0 and y.shape[3] % 2 == 0:
            return to_yuv420p(y, yuv420)
        return to_rgb24(y)

    def release_graphs(self) -> None:
        """Free the captured CUDA graphs and their memory pools (shapes are captured again when
        they come back): call it before another engine plans on the same GPU, since free
        memory does not show what the pools hold back."""
        if self._forward.graphs is not None:
            self._forward.graphs.graphs.clear()

    def model_call(self, x: Tensor) -> Tensor:
        """float NCHW padded to ALIGN -> float32 x scale: the call `_run` makes, replaying the
        CUDA graph for a batch of the planned size (also what `streamsr bench` times)."""
        planned = self._memory.chunk.get((x.shape[2], x.shape[3]), self.batch)
        return self._forward(x, replay=x.shape[0] == planned)

    def _fixed_batch(self, x: Tensor, size: int) -> Tensor:
        """With torch.compile, pad a short (last) batch to the planned size so nothing recompiles."""
        if self._forward.compiled is None or x.shape[0] >= size:
            return x
        extra = x[-1:].expand(size - x.shape[0], *x.shape[1:])
        return torch.cat((x, extra))


def _as_frame_batches(batches: Iterable[FrameBatch | np.ndarray]) -> Iterator[tuple[FrameBatch, bool]]:
    """Each batch as a FrameBatch, with whether it came as a plain array."""
    for batch in batches:
        if isinstance(batch, FrameBatch):
            yield batch, False
        else:
            yield FrameBatch(batch), True
