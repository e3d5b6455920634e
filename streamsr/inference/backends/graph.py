"""The model as an exportable graph: float32 frames in, the x4 image out, equal to eager torch.

Exporters and runtimes read `DeblurSR` well except for one op: the bicubic skip of `lite`
(`F.interpolate(mode="bicubic", antialias=True)`, i.e. the Keys kernel with a = -0.5 whose taps
outside the image are dropped and the rest renormalised). torch's dynamo exporter writes it as
an ONNX `Resize` with `cubic_coeff_a=-0.5`, `exclude_outside=1`, `antialias=1`, which ONNX
Runtime follows exactly; OpenVINO's `Interpolate` keeps the interior but not `exclude_outside`,
so its output differed from torch's by up to 0.05 (13 of 255 levels) along every frame edge
(measured: the interior matched to 0, the 8 outermost HR rows and columns did not). In the
exported graph the skip is therefore `SeparableBicubic`: the same resize as two separable
convolutions with fixed taps whose border renormalisation is an explicit division, plain ops that
every runtime computes the same way (max difference from torch 2.4e-7).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GRAPH_VERSION = "1"  # bump when the exported graph changes: cached exports are then rebuilt


def keys_cubic(t: float, a: float = -0.5) -> float:
    """The Keys cubic convolution kernel (a = -0.5: PIL's and torch's antialiased bicubic)."""
    t = abs(t)
    if t < 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    if t < 2:
        return (((t - 5) * t + 8) * t - 4) * a
    return 0.0


def phase_taps(scale: int) -> Tensor:
    """(scale, 5) weights: output pixel `scale * k + p` reads input pixels k-2 .. k+2.

    With half-pixel centres, output p of input cell k sits at k + (p + 0.5) / scale - 0.5
    input pixels, within half a pixel of k, so the kernel's support of 2 never reaches further.
    """
    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for p in range(scale):
        offset = (p + 0.5) / scale - 0.5
        for i, d in enumerate(range(-2, 3)):
            taps[p, i] = keys_cubic(d - offset)
    return taps


class SeparableBicubic(nn.Module):
    """x `scale` upsampling equal to `resize_bicubic`, as convolutions any runtime reads alike.

    Per axis: the input zero-padded by 2, one 5-tap convolution per output phase, divided by the
    same convolution of a ones mask (so taps that fall outside the image are dropped and the
    rest renormalised, as torch does), the phases interleaved by a reshape.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("taps", phase_taps(scale).float(), persistent=False)

    def _axis(self, x: Tensor, dim: int) -> Tensor:
        s = self.scale
        kernel = self.taps.view(s, 1, 5, 1) if dim == 2 else self.taps.view(s, 1, 1, 5)
        pad = (0, 0, 2, 2) if dim == 2 else (2, 2, 0, 0)
        num = F.conv2d(F.pad(x, pad), kernel.to(x.dtype))
        den = F.conv2d(F.pad(torch.ones_like(x[:1]), pad), kernel.to(x.dtype))
        y = num / den  # (B, s, H, W): one plane per phase
        b, _, h, w = y.shape
        if dim == 2:
            return y.permute(0, 2, 1, 3).reshape(b, 1, h * s, w)
        return y.permute(0, 2, 3, 1).reshape(b, 1, h, w * s)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        y = self._axis(self._axis(x.reshape(n * c, 1, h, w), 2), 3)
        return y.reshape(n, c, h * self.scale, w * self.scale)


class ExportGraph(nn.Module):
    """float32 NCHW in [0, 1] -> float32 NCHW x scale (clamped for `bicubic_skip` models).

    The model runs in `dtype` inside (fp16/bf16 exports); inputs and outputs stay float32 so a
    deployed file takes the same frames whatever its precision.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x.to(self.dtype))
        hr = out if isinstance(out, Tensor) else out.hr
        return hr.float()


def export_ready(model: nn.Module, dtype: torch.dtype = torch.float32) -> ExportGraph:
    """A CPU copy of `model` in eval mode and `dtype`, its bicubic skip made export-exact."""
    net = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    skip = getattr(net, "skip", None)
    if skip is not None:
        net.skip = SeparableBicubic(skip.scale)
    return ExportGraph(net.to(dtype), dtype).eval()


def weights_hash(model: nn.Module) -> str:
    """sha256 of the model's tensors (names, dtypes, shapes, bytes): the same for the same
    weights wherever they were loaded from."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_config_json(model: nn.Module) -> str:
    """The model's config as JSON (`DeblurSRConfig.to_json`), or {} for other modules."""
    cfg = getattr(model, "config", None)
    return cfg.to_json() if hasattr(cfg, "to_json") else "{}"


def model_scale(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "scale", None) or getattr(model, "scale", 4))


def output_shape(shape: tuple[int, ...], scale: int) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, c, h * scale, w * scale)


def align_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple
