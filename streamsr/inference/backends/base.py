"""The model call every non-torch backend provides to the engine."""

from __future__ import annotations

import torch
from torch import Tensor


class BackendForward:
    """float NCHW in [0, 1] -> float32 NCHW x scale, run by a runtime instead of eager torch.

    The engine calls it exactly as its torch call (`inference.forward.TorchForward`): `eager=True` asks for the
    torch model itself (the engine's one small trial run that measures activation memory), and
    `replay` is ignored (no CUDA graphs of the engine's own; `graphs` and `compiled` are None, so
    the engine neither captures graphs nor pads short batches).
    """

    name = "?"
    graphs = None
    compiled = None

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.eager = model
        self.device = device
        self.dtype = dtype

    def __call__(self, x: Tensor, eager: bool = False, replay: bool = False) -> Tensor:
        if eager:
            out = self.eager(x.contiguous())
            return (out if isinstance(out, Tensor) else out.hr).float()
        return self.run(x)

    def run(self, x: Tensor) -> Tensor:
        """The runtime's output for `x` (same device as `x`, owned by the caller)."""
        raise NotImplementedError

    @property
    def precision(self) -> str:
        return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
