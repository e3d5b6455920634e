"""Memory planning for the engine: frames per model call and tile sizes that fit free memory,
made smaller after an out-of-memory error so that no frame is ever dropped."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor

from streamsr.errors import ConfigError

log = logging.getLogger(__name__)

ALIGN = 8  # frames are padded to a multiple of this (MPRNet's quarter patches down-sampled twice)
CPU_BATCH = 4  # at most this many frames per call on CPU (and no more than threads, see engine)
MAX_AUTO_BATCH = 16  # beyond this a GPU is saturated and latency only grows
MIN_TILE = 32
# Automatic tiles stay at most this big (LR px): cuDNN autotunes every new shape, and for huge
# tiles the first frame's autotuning costs far more than smaller tiles ever lose
# (docs/architecture.md has the measurement).
MAX_AUTO_TILE = 1024
MEMORY_HEADROOM = 0.6  # fraction of free memory a batch may plan to use

Key = tuple[int, int]  # a frame size padded to ALIGN: (height, width)


def is_oom(exc: BaseException) -> bool:
    """True for the out-of-memory errors of every backend."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


def free_memory(device: torch.device) -> int:
    """Bytes a new allocation may use: CUDA free + our allocator's cached blocks; CPU MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def padded(height: int, width: int) -> Key:
    """The frame size the model sees: each side rounded up to a multiple of ALIGN."""
    return -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN


def measure_bytes_per_pixel(forward: Callable[..., Tensor], model: torch.nn.Module,
                            device: torch.device) -> float:
    """Activation memory per LR pixel of one frame, from trial runs of `forward(x, eager=True)`."""
    if device.type == "cuda":
        # Peak memory at two sizes; the slope excludes fixed costs (weights, cuDNN workspace).
        peaks = []
        for side in (64, 128):
            x = torch.zeros(1, 3, side, side, device=device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            with torch.inference_mode():
                forward(x, eager=True)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
        slope = (peaks[1] - peaks[0]) / (128 * 128 - 64 * 64)
        return max(slope, peaks[1] / (128 * 128) * 0.5) * 1.25
    # CPU has no allocator statistics: take the largest activation of a small trial run and
    # assume a few of that size are alive at once (residuals, concatenations).
    largest = [0]

    def hook(_module, _inputs, output) -> None:
        if isinstance(output, Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.inference_mode():
            forward(torch.zeros(1, 3, 32, 32), eager=True)
    finally:
        for handle in handles:
            handle.remove()
    return max(4.0 * largest[0] / (32 * 32), 64.0)


class MemoryPlan:
    """Frames per model call, tile size (0: whole frames) and tiles per call, by padded frame
    size: planned from free memory on first sight of a size, shrunk after out-of-memory errors
    and remembered for the following batches."""

    def __init__(self, device: torch.device, *, batch: int | None, tile: int | None,
                 tile_overlap: int, cpu_batch: int) -> None:
        self.device = device
        self.batch, self.tile, self.overlap = batch, tile, tile_overlap  # the user's (None: auto)
        self.cpu_batch = cpu_batch
        self.chunk: dict[Key, int] = {}  # frames per call
        self.tiles: dict[Key, int] = {}  # tile size (0: none)
        self.tiles_per_call: dict[Key, int] = {}  # tiles batched per model call

    def plan(self, height: int, width: int,
             bytes_per_pixel: Callable[[], float]) -> tuple[int, int]:
        """(frames per model call, tile size or 0) for frames of this size; `bytes_per_pixel()`
        is asked only when free memory decides (it is passed in rather than kept, so that no
        reference cycle holds the engine and its graphs' memory)."""
        key = padded(height, width)
        if key in self.chunk:
            return self.chunk[key], self.tiles[key]
        h, w = key
        tile, chunk = self.tile, self.batch
        limit = MAX_AUTO_BATCH if self.device.type == "cuda" else self.cpu_batch
        overlap = self.overlap
        budget = 0.0
        if tile is None or chunk is None or tile:
            budget = free_memory(self.device) * MEMORY_HEADROOM
        if tile is None:
            tile = 0
            if bytes_per_pixel() * h * w > budget:  # not one frame fits: tiles that do
                side = math.isqrt(int(budget // bytes_per_pixel()))
                tile = min(MAX_AUTO_TILE, (side - 2 * overlap) // ALIGN * ALIGN)
                tile = max(MIN_TILE, tile)
                log.info("frames of %dx%d do not fit in memory: tiles of %d px", w, h, tile)
        if tile and tile >= max(h, w):
            tile = 0
        if chunk is None:
            chunk = 1 if tile else max(1, min(limit, int(budget // (bytes_per_pixel() * h * w))))
        per_call = chunk
        if tile:
            side = -(-(tile + 2 * overlap) // ALIGN) * ALIGN
            window_px = min(h, side) * min(w, side)
            per_call = self.batch or max(
                1, min(limit, int(budget // (bytes_per_pixel() * window_px))))
        self.chunk[key], self.tiles[key], self.tiles_per_call[key] = chunk, tile, per_call
        return chunk, tile

    def shrink(self, key: Key, frames: int, width: int, height: int) -> None:
        """After out of memory on `frames` frames of this size: half the frames, down to one,
        then half the tiles per call, then ever smaller tiles; a clear error when nothing
        smaller is left."""
        tile = self.tiles[key]
        if frames > 1:
            self.chunk[key] = (frames + 1) // 2
            log.warning("out of memory with %d frames of %dx%d: retrying %d at a time",
                        frames, width, height, self.chunk[key])
            return
        if tile and self.tiles_per_call[key] > 1:
            self.tiles_per_call[key] = (self.tiles_per_call[key] + 1) // 2
            log.warning("out of memory with %d-px tiles of a %dx%d frame: %d tiles at a time",
                        tile, width, height, self.tiles_per_call[key])
            return
        if self.tile == 0:
            raise ConfigError(f"out of memory on one {width}x{height} frame with tiling disabled; "
                              f"use a tile size (e.g. --tile 256) or a smaller model") from None
        smaller = max(MIN_TILE, (tile or max(key)) // 2 // ALIGN * ALIGN)
        if tile and smaller >= tile:
            hint = ("a smaller model, or free memory" if self.device.type == "cpu"
                    else "--device cpu or a smaller model")
            raise ConfigError(f"out of memory even with {tile}-px tiles on {self.device}; "
                              f"try {hint}; the frames done so far are kept") from None
        self.tiles[key] = smaller
        self.tiles_per_call[key] = 1
        log.warning("out of memory on one %dx%d frame: retrying with %d-px tiles", width, height,
                    smaller)
