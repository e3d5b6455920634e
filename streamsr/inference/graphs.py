"""CUDA graphs of the eager model call: hundreds of small kernels launched as one replay."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from streamsr.errors import ConfigError
from streamsr.inference.memory import is_oom

if TYPE_CHECKING:
    from streamsr.inference.forward import TorchForward

log = logging.getLogger(__name__)

CUDA_GRAPH_MODES = ("auto", "on", "off")
GRAPH_WARMUP = 2  # eager calls on a side stream before capture: cuDNN autotuning, lazy inits
MAX_GRAPHS = 4  # captured shapes kept at most: each holds its own activation memory


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


def record_graph(forward: TorchForward, static_in: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor]:
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


class CudaGraphs:
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

    def __call__(self, forward: TorchForward, x: Tensor) -> Tensor | None:
        """The model's output for `x` by graph replay, or None when `x` must run eagerly."""
        entry = self.capture(forward, x)
        if entry is None:
            return None
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        self.replays += 1
        return static_out

    def capture(self, forward: TorchForward,
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
