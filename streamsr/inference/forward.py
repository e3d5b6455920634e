"""The torch model call the engine makes: autocast, memory format, compile, graph replay."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from streamsr.inference.graphs import CudaGraphs
from streamsr.inference.memory import is_oom

log = logging.getLogger(__name__)


class TorchForward:
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
        self.graphs: CudaGraphs | None = CudaGraphs(channels_last) if graphs else None

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
        return hr(out).float()

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
        return hr(out).float()


def hr(out) -> Tensor:
    """The high-resolution output of a model that returns a tensor or an object with `.hr`."""
    return out if isinstance(out, Tensor) else out.hr
