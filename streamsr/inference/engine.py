"""Runs a x4 model on batches of uint8 frames, as fast as the device allows, losing nothing.

Frames travel as uint8 NHWC; conversion to float, normalisation, padding, channels_last,
rounding back to uint8 all happen on the device as whole-batch torch ops. On CUDA `map()`
double-buffers through pinned host memory and a separate copy stream ordered by events, so the
copy of batch n+1 and the read-back of batch n-1 overlap the model on batch n. On CPU the same
engine runs as a plain loop. Batch and tile sizes follow free memory; an out-of-memory error
retries the same frames with half the batch, then with smaller tiles, and never drops a frame.
High-bit-depth frames travel as uint16 NHWC (x / 65535) and come back as uint16; on CUDA they run
one batch at a time, outside the uint8 pinned ring. On CUDA, full batches of the planned size
replay a captured CUDA graph of the model call (`cuda_graphs`), so hundreds of small kernels
launch as one; other shapes run eagerly.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from streamsr.errors import ConfigError
from streamsr.inference.backends import make_forward, resolve_backend
from streamsr.inference.output_size import OutputSize
from streamsr.inference.pack import Yuv420, to_rgb24, to_yuv420p
from streamsr.inference.tiling import run_tiled
from streamsr.models.mprnet import pad_to_multiple
from streamsr.runtime import cpu_threads_fixed, resolve_device, resolve_precision, use_cpu_threads

log = logging.getLogger(__name__)

ALIGN = 8  # frames are padded to a multiple of this (MPRNet's quarter patches down-sampled twice)
CPU_BATCH = 4  # at most this many frames per call on CPU (and no more than threads, see below)
MAX_AUTO_BATCH = 16  # beyond this a GPU is saturated and latency only grows
MIN_TILE = 32
# Automatic tiles stay at most this big (LR px). On an H200, the first 4K frame in 2512-px tiles
# took 71 s (cuDNN autotuning the huge shape), the next 1.75 s; 1024-px tiles: 3.3 s, then 2.1 s.
MAX_AUTO_TILE = 1024
TILE_FEATHER = 1.0  # cross-fade tiles over this fraction of the overlap (see streamsr.inference.tiling)
MEMORY_HEADROOM = 0.6  # fraction of free memory a batch may plan to use
CUDA_GRAPH_MODES = ("auto", "on", "off")
GRAPH_WARMUP = 2  # eager calls on a side stream before capture: cuDNN autotuning, lazy inits
MAX_GRAPHS = 4  # captured shapes kept at most: each holds its own activation memory


@dataclass
class EngineConfig:
    """How to run the model: device, precision, batch/tile sizes (None: chosen from memory)."""

    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    precision: str = "auto"  # "auto" (bf16 / fp16 on CUDA, fp32 on CPU), "bf16", "fp16", "fp32"
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


def is_oom(exc: BaseException) -> bool:
    """True for the out-of-memory errors of every backend."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


def resolve_cuda_graphs(mode: str, device: torch.device, compile: bool) -> bool:
    """Whether to replay CUDA graphs: only on CUDA, and only for the eager model.

    torch.compile has its own graph mode ("reduce-overhead"); capturing compiled code by hand
    would record its guard checks and recompiles, so with compile the graphs stay off.
    """
    if mode not in CUDA_GRAPH_MODES:
        raise ConfigError(f"unknown cuda_graphs {mode!r}; use auto, on or off")
    if mode == "off" or device.type != "cuda":
        return False
    if compile:
        if mode == "on":
            log.warning("CUDA graphs are not used with torch.compile; running the compiled model")
        return False
    return True


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


def model_scale(model: torch.nn.Module) -> int:
    """The model's upscaling factor: `model.config.scale`, else `model.scale`, else 4."""
    cfg = getattr(model, "config", None)
    scale = getattr(cfg, "scale", None) if cfg is not None else None
    if scale is None:
        scale = getattr(model, "scale", 4)
    return int(scale)


class _Forward:
    """The model call: autocast, channels_last, `.hr` unwrapping, compile with eager fallback,
    and CUDA graph replay (`graphs`) for the shapes the engine asks to replay."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 channels_last: bool, compile: bool, graphs: bool = False) -> None:
        self.eager = model
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled: Callable | None = None
        if compile:
            try:
                self.compiled = torch.compile(model)
            except Exception as exc:  # noqa: BLE001 - any failure means "run eagerly"
                log.warning("torch.compile unavailable (%s); running the model eagerly", exc)
        self.graphs: _Graphs | None = _Graphs(channels_last) if graphs else None

    def autocast(self, cache: bool = True):
        if self.dtype == torch.float32:
            return nullcontext()
        # Capturing needs the weight-cast cache off: casts cached during capture would be freed
        # when autocast exits while the graph still reads them (torch's CUDA graphs notes).
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=cache)

    def run_eager(self, x: Tensor, cache: bool = True) -> Tensor:
        """The eager model on `x` (already in the model's memory format) -> float32."""
        with self.autocast(cache):
            out = self.eager(x)
        return _hr(out).float()

    def __call__(self, x: Tensor, eager: bool = False, replay: bool = False) -> Tensor:
        """float NCHW in [0, 1] -> float32 NCHW (x scale), values not yet clamped.

        `replay`: run a CUDA graph of this shape (captured on first use) when graphs are on;
        its output is a static buffer, valid until the next replay of the same shape.
        """
        if replay and not eager and self.graphs is not None and self.compiled is None:
            out = self.graphs(self, x)
            if out is not None:
                return out
        # the frames arrive NHWC-permuted, i.e. already channels_last: make the layout the asked one
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last
                         else torch.contiguous_format)
        fn = self.eager if (eager or self.compiled is None) else self.compiled
        try:
            with self.autocast():
                out = fn(x)
        except Exception as exc:
            if fn is self.eager or is_oom(exc):
                raise
            log.warning("torch.compile failed (%s: %s); falling back to the eager model",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.compiled = None
            with self.autocast():
                out = self.eager(x)
        return _hr(out).float()


def _hr(out) -> Tensor:
    return out if isinstance(out, Tensor) else out.hr


def record_graph(forward: _Forward, static_in: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    """Capture `forward.run_eager(static_in)` into a CUDA graph; returns it and its output.

    As torch.cuda.graph's documentation asks: warm up on a side stream first (cuDNN picks its
    kernels there; nothing may synchronise or allocate pinned memory during capture), then
    capture on that stream, which torch.cuda.graph synchronises before it begins.
    """
    device = static_in.device
    with torch.cuda.device(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                forward.run_eager(static_in, cache=False)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            static_out = forward.run_eager(static_in, cache=False)
    return graph, static_out


class _Graphs:
    """CUDA graphs of the eager model call, one per input shape, with static input and output.

    MPRNet is hundreds of small kernels; launching them one by one from Python leaves the GPU
    idle between them, while a replayed graph launches them all at once. A graph reads a fixed
    input buffer and writes a fixed output buffer: `__call__` copies the batch into the input
    on the current (compute) stream, so the copy stays ordered after whatever that stream
    waited for (the pinned ring's upload event), and the replay runs on that stream too.
    A capture that fails for any reason but memory turns the graphs off for good with one
    warning; out of memory propagates, so the engine retries with a smaller batch as usual.
    (The model call is passed in, not kept: no reference cycle holds the graphs' memory after
    the engine is gone.)
    """

    def __init__(self, channels_last: bool) -> None:
        # static inputs get the layout the eager call would give the model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        self.enabled = True
        self.replays = 0

    def __call__(self, forward: _Forward, x: Tensor) -> Tensor | None:
        """The model's output for `x` by graph replay, or None when `x` must run eagerly."""
        entry = self.capture(forward, x)
        if entry is None:
            return None
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        self.replays += 1
        return static_out

    def capture(self, forward: _Forward,
                x: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor] | None:
        """The graph for `x`'s shape, captured now if new; None: run this shape eagerly."""
        key = tuple(x.shape)
        if key in self.graphs:
            return self.graphs[key]
        if not self.enabled or len(self.graphs) >= MAX_GRAPHS:
            return None
        static_in = torch.empty_like(x, memory_format=self.memory_format)
        static_in.copy_(x)
        try:
            graph, static_out = record_graph(forward, static_in)
        except Exception as exc:
            if is_oom(exc):
                raise
            self.enabled = False
            text = str(exc).splitlines()[0] if str(exc) else ""
            log.warning("CUDA graph capture failed for input %s (%s: %s); running the model "
                        "eagerly", "x".join(map(str, key)), type(exc).__name__, text)
            return None
        self.graphs[key] = (graph, static_in, static_out)
        log.info("captured a CUDA graph of the model for input %s", "x".join(map(str, key)))
        return self.graphs[key]


class Engine:
    """uint8 (or uint16) NHWC frames in, the same dtype x `scale` out, batched on the device."""

    def __init__(self, model: torch.nn.Module, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        if config.batch is not None and config.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {config.batch}")
        if config.tile is not None and 0 < config.tile < ALIGN:
            raise ConfigError(f"tile must be 0 (off) or at least {ALIGN} px, got {config.tile}")
        if config.tile_overlap < 0:
            raise ConfigError(f"tile overlap must be >= 0, got {config.tile_overlap}")
        self.device = resolve_device(config.device)
        self.dtype = resolve_precision(config.precision, self.device)
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
        if self.backend == "torch":
            self._forward = _Forward(model, self.device, self.dtype, config.channels_last,
                                     config.compile, graphs)
        else:  # the exported model on a runtime, behind the same call (streamsr/inference/backends/)
            if config.compile:
                raise ConfigError("--compile applies to the torch backend only")
            graphs = False
            self._forward = make_forward(self.backend, model, self.device, self.dtype,
                                         threads or 1)
            self.threads_fixed = True  # the runtime's own threads: torch's count is no lever
        # On CPU a batch only helps by giving more threads parallel work: with one free thread,
        # lite at 320x180 ran 0.137 fps at batch 1 and 0.110 fps at batch 4 (loaded 2-core box).
        self._cpu_batch = min(CPU_BATCH, threads) if threads else CPU_BATCH
        self.batch = config.batch or (self._cpu_batch if self.device.type == "cpu" else 8)
        # None: results are uint8 RGB NHWC; a Yuv420 target: uint8 yuv420p planes (N, 3sH/2, sW),
        # made on the device (the pipeline sets it when its encoder takes yuv420p, see pack.py)
        self.pack: Yuv420 | None = None
        # None: outputs are x scale; else downscaled on the device to this rule's size (the
        # pipeline sets it for --outscale/--size, see streamsr/inference/output_size.py)
        self.output_size: OutputSize | None = None
        # wall time spent in upscale_batch and frames done there (see pipeline._CpuThreads)
        self.busy_seconds, self.frames_done = 0.0, 0
        self._bytes_per_px: float | None = None  # activation memory per LR pixel, measured once
        self._chunk: dict[tuple[int, int], int] = {}  # frames per call, by padded frame size
        self._tile: dict[tuple[int, int], int] = {}  # tile size, by padded frame size (0: none)
        self._tiles_per_call: dict[tuple[int, int], int] = {}  # tiles batched per model call
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

    def _capture_graph(self, height: int, width: int, chunk: int) -> None:
        """Capture the full batch's CUDA graph now, before frames flow: a capture synchronises
        the device once, and the pinned ring's loop never should. Out of memory here only
        postpones it to the run, where the batch may shrink first."""
        graphs = self._forward.graphs
        if graphs is None or not graphs.enabled:
            return
        # laid out as `_run` makes its input: NHWC frames permuted to NCHW
        x = torch.zeros(chunk, -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN, 3,
                        device=self.device).permute(0, 3, 1, 2)
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

    def _plan(self, height: int, width: int) -> tuple[int, int]:
        """(frames per model call, tile size or 0) for frames of this size."""
        key = (-(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN)
        if key in self._chunk:
            return self._chunk[key], self._tile[key]
        h, w = key
        tile, chunk = self.config.tile, self.config.batch
        limit = MAX_AUTO_BATCH if self.device.type == "cuda" else self._cpu_batch
        overlap = self.config.tile_overlap
        budget = 0.0
        if tile is None or chunk is None or tile:
            budget = free_memory(self.device) * MEMORY_HEADROOM
        if tile is None:
            tile = 0
            if self.bytes_per_pixel() * h * w > budget:  # not one frame fits: tiles that do
                side = math.isqrt(int(budget // self.bytes_per_pixel()))
                tile = min(MAX_AUTO_TILE, (side - 2 * overlap) // ALIGN * ALIGN)
                tile = max(MIN_TILE, tile)
                log.info("frames of %dx%d do not fit in memory: tiles of %d px", w, h, tile)
        if tile and tile >= max(h, w):
            tile = 0
        if chunk is None:
            chunk = 1 if tile else max(1, min(limit, int(budget // (self.bytes_per_pixel() * h * w))))
        per_call = chunk
        if tile:
            side = -(-(tile + 2 * overlap) // ALIGN) * ALIGN
            window_px = min(h, side) * min(w, side)
            per_call = self.config.batch or max(
                1, min(limit, int(budget // (self.bytes_per_pixel() * window_px))))
        self._chunk[key], self._tile[key], self._tiles_per_call[key] = chunk, tile, per_call
        return chunk, tile

    def bytes_per_pixel(self) -> float:
        """Activation memory per LR pixel of one frame, from a trial run (measured once)."""
        if self._bytes_per_px is None:
            self._bytes_per_px = self._measure_bytes_per_pixel()
            log.info("model needs ~%.0f bytes of activations per input pixel", self._bytes_per_px)
        return self._bytes_per_px

    def _measure_bytes_per_pixel(self) -> float:
        if self.device.type == "cuda":
            # Peak memory at two sizes; the slope excludes fixed costs (weights, cuDNN workspace).
            peaks = []
            for side in (64, 128):
                x = torch.zeros(1, 3, side, side, device=self.device)
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
                with torch.inference_mode():
                    self._forward(x, eager=True)
                torch.cuda.synchronize(self.device)
                peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
            slope = (peaks[1] - peaks[0]) / (128 * 128 - 64 * 64)
            return max(slope, peaks[1] / (128 * 128) * 0.5) * 1.25
        # CPU has no allocator statistics: take the largest activation of a small trial run and
        # assume a few of that size are alive at once (residuals, concatenations).
        largest = [0]

        def hook(_module, _inputs, output) -> None:
            if isinstance(output, Tensor):
                largest[0] = max(largest[0], output.numel() * output.element_size())

        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            with torch.inference_mode():
                self._forward(torch.zeros(1, 3, 32, 32), eager=True)
        finally:
            for handle in handles:
                handle.remove()
        return max(4.0 * largest[0] / (32 * 32), 64.0)

    # -- running ----------------------------------------------------------------------------

    def upscale_batch(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> uint8 (N, sH, sW, 3), uint16 -> uint16; one (H, W, 3) frame too."""
        single = frames.ndim == 3
        batch = _check_frames(frames[None] if single else frames)
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            y = self._infer(x)
            out = y.cpu().numpy()
        self.busy_seconds += time.perf_counter() - t0
        self.frames_done += len(batch)
        return out[0] if single else out

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`upscale_batch` over an iterable, pipelined; yields one result per batch, in order."""
        if self.device.type != "cuda":
            for frames in batches:
                yield self.upscale_batch(frames)
            return
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return
        rest = itertools.chain([first], batches)
        if first.dtype == np.uint8:
            yield from self._map_cuda(rest)
        else:  # uint16 (high bit depth): one batch at a time, outside the uint8 pinned ring
            for frames in rest:
                yield self.upscale_batch(frames)

    def _map_cuda(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Two pinned input and output buffers; H2D/D2H on a copy stream, ordered by events."""
        device = self.device
        compute = torch.cuda.current_stream(device)
        copy = torch.cuda.Stream(device)
        readback = torch.cuda.Stream(device)
        pinned_in: list[Tensor | None] = [None, None]
        pinned_out: list[Tensor | None] = [None, None]
        device_in: list[Tensor | None] = [None, None]
        uploaded = [torch.cuda.Event(), torch.cuda.Event()]  # H2D of the slot done
        consumed = [torch.cuda.Event(), torch.cuda.Event()]  # the model no longer reads device_in
        downloaded = [torch.cuda.Event(), torch.cuda.Event()]  # D2H into pinned_out done
        pending: tuple[int, tuple[int, ...]] | None = None  # (slot, out shape) awaiting yield

        for n, frames in enumerate(batches):
            slot = n % 2
            frames = _check_frames(frames)
            if frames.dtype != np.uint8:
                raise TypeError("the CUDA pinned ring takes uint8 frames; a stream is one dtype")
            nbytes = frames.nbytes
            # Host side: wait until slot's previous upload (batch n-2) left the pinned buffer.
            uploaded[slot].synchronize()
            pinned_in[slot] = _ensure(pinned_in[slot], nbytes, pin=True)
            host = pinned_in[slot][:nbytes].view(frames.shape)
            host.copy_(torch.from_numpy(frames))
            grown = _ensure(device_in[slot], nbytes, device=device, stream=copy)
            if grown is not device_in[slot]:
                grown.record_stream(compute)  # allocated on `copy`, read on `compute`
                device_in[slot] = grown
            dev = device_in[slot][:nbytes].view(frames.shape)
            with torch.cuda.stream(copy):
                copy.wait_event(consumed[slot])  # batch n-2's model call is done with dev
                dev.copy_(host, non_blocking=True)
                uploaded[slot].record(copy)

            compute.wait_event(uploaded[slot])
            with torch.inference_mode():
                out = self._infer(dev)
            consumed[slot].record(compute)

            readback.wait_event(consumed[slot])
            out_bytes = out.numel()
            pinned_out[slot] = _ensure(pinned_out[slot], out_bytes, pin=True)
            with torch.cuda.stream(readback):
                pinned_out[slot][:out_bytes].view(out.shape).copy_(out, non_blocking=True)
                downloaded[slot].record(readback)
            out.record_stream(readback)  # keep `out` alive until the copy has read it

            if pending is not None:
                yield self._collect(pinned_out, downloaded, *pending)
            pending = (slot, tuple(out.shape))
        if pending is not None:
            yield self._collect(pinned_out, downloaded, *pending)

    @staticmethod
    def _collect(pinned_out: list[Tensor | None], downloaded: list, slot: int,
                 shape: tuple[int, ...]) -> np.ndarray:
        """Wait for one read-back (an event, not a device sync) and copy it out of pinned memory."""
        downloaded[slot].synchronize()
        buf = pinned_out[slot]
        assert buf is not None
        return buf[:math.prod(shape)].view(shape).numpy().copy()

    def _infer(self, frames: Tensor) -> Tensor:
        """uint8/uint16 NHWC on the device -> the same x scale on the device, whatever memory allows.

        Frames go through in chunks of the planned size. On out-of-memory the same frames are
        retried with half the chunk, down to one frame, then with ever smaller tiles; the
        smaller sizes are remembered for the following batches. No frame is ever dropped.
        """
        n, h, w, _ = frames.shape
        self._plan(h, w)
        key = (-(-h // ALIGN) * ALIGN, -(-w // ALIGN) * ALIGN)
        outs = []
        start = 0
        while start < n:
            part = frames[start:start + self._chunk[key]]
            tile = self._tile[key]
            try:
                outs.append(self._run(part, tile))
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
            if part.shape[0] > 1:
                self._chunk[key] = (part.shape[0] + 1) // 2
                log.warning("out of memory with %d frames of %dx%d: retrying %d at a time",
                            part.shape[0], w, h, self._chunk[key])
                continue
            if tile and self._tiles_per_call[key] > 1:
                self._tiles_per_call[key] = (self._tiles_per_call[key] + 1) // 2
                log.warning("out of memory with %d-px tiles of a %dx%d frame: %d tiles at a time",
                            tile, w, h, self._tiles_per_call[key])
                continue
            if self.config.tile == 0:
                raise ConfigError(f"out of memory on one {w}x{h} frame with tiling disabled; "
                                  f"use a tile size (e.g. --tile 256) or a smaller model") from None
            smaller = max(MIN_TILE, (tile or max(key)) // 2 // ALIGN * ALIGN)
            if tile and smaller >= tile:
                hint = ("a smaller model, or free memory" if self.device.type == "cpu"
                        else "--device cpu or a smaller model")
                raise ConfigError(f"out of memory even with {tile}-px tiles on {self.device}; "
                                  f"try {hint}; the frames done so far are kept") from None
            self._tile[key] = smaller
            self._tiles_per_call[key] = 1
            log.warning("out of memory on one %dx%d frame: retrying with %d-px tiles", w, h, smaller)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _run(self, frames: Tensor, tile: int) -> Tensor:
        """One model call (or one tiled pass) with all conversions on the device."""
        n, h, w, _ = frames.shape
        # Pad to a multiple of 8 (reflect, exactly as DeblurSR pads itself), tiled or not, so a
        # tiled frame sees the same borders as a whole one and tile starts can be aligned.
        deep = frames.dtype == torch.uint16
        x = pad_to_multiple(frames.permute(0, 3, 1, 2).float().div_(65535.0 if deep else 255.0), ALIGN)
        if tile:
            per_call = self._tiles_per_call[(x.shape[2], x.shape[3])]
            overlap = self.config.tile_overlap
            y = run_tiled(self._forward, x, tile=tile, overlap=overlap, scale=self.scale,
                          feather=round(overlap * TILE_FEATHER), tiles_per_call=per_call,
                          align=ALIGN)
        else:
            y = self.model_call(self._fixed_batch(x, self._chunk[(x.shape[2], x.shape[3])]))[:n]
        s = self.scale
        y = y[:, :, : s * h, : s * w]
        if self.output_size is not None:
            y = self.output_size.resize(y, w, h, s)
        if deep:
            return to_rgb48(y)
        if self.pack is not None and y.shape[2] % 2 == 0 and y.shape[3] % 2 == 0:
            return to_yuv420p(y, self.pack)
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
        planned = self._chunk.get((x.shape[2], x.shape[3]), self.batch)
        return self._forward(x, replay=x.shape[0] == planned)

    def _fixed_batch(self, x: Tensor, size: int) -> Tensor:
        """With torch.compile, pad a short (last) batch to the planned size so nothing recompiles."""
        if self._forward.compiled is None or x.shape[0] >= size:
            return x
        extra = x[-1:].expand(size - x.shape[0], *x.shape[1:])
        return torch.cat((x, extra))


def to_rgb48(y: Tensor) -> Tensor:
    """float NCHW in [0, 1] (unclamped; overwritten) -> uint16 NHWC, rounded to nearest."""
    return y.mul_(65535.0).round_().clamp_(0, 65535).to(torch.uint16).permute(0, 2, 3, 1).contiguous()


def _check_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 or uint16 (N, H, W, 3), C-contiguous, or a clear error for the caller's bug."""
    if not isinstance(frames, np.ndarray) or frames.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"frames must be a uint8 or uint16 numpy array, got "
                        f"{getattr(frames, 'dtype', type(frames))}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (N, H, W, 3) with N >= 1, got {frames.shape}")
    return np.ascontiguousarray(frames)


def _ensure(buf: Tensor | None, nbytes: int, *, pin: bool = False, device: torch.device | None = None,
            stream: torch.cuda.Stream | None = None) -> Tensor:
    """A flat uint8 buffer of at least `nbytes` (reused when big enough, grown otherwise)."""
    if buf is not None and buf.numel() >= nbytes:
        return buf
    if device is not None:
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
