"""The resampling kernel and colour curves used everywhere in streamsr.

Bicubic means one thing in this project: PyTorch's `interpolate(mode="bicubic",
antialias=True)`, the Keys kernel with a = -0.5 widened by the scale factor when shrinking.
That is PIL's BICUBIC and, up to rounding, MATLAB's `imresize`, which produced the LR inputs of
the SR literature the paper compares with. OpenCV's INTER_CUBIC (a = -0.75, no anti-aliasing)
aliases badly on x4 down-sampling, so it is not used. Training triplets, evaluation inputs, the
bicubic baseline and `--side-by-side` all go through `resize_bicubic`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def resize_bicubic(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Float NCHW (or CHW) -> (H, W) = `size`, antialiased bicubic; values are not clamped."""
    squeeze = x.dim() == 3
    if squeeze:
        x = x[None]
    y = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return y[0] if squeeze else y


def scale_bicubic(x: Tensor, factor: float) -> Tensor:
    """Resize float NCHW by `factor` (x4 up: 4, x4 down: 0.25), sizes rounded down."""
    h, w = x.shape[-2:]
    return resize_bicubic(x, (max(1, int(h * factor)), max(1, int(w * factor))))


def bicubic_uint8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HWC (RGB) -> uint8 HWC of (H, W) = `size`, rounded and clamped."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    y = resize_bicubic(t, size).round_().clamp_(0, 255)
    return y.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def srgb_to_linear(x: np.ndarray | Tensor):
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    if isinstance(x, Tensor):
        return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray | Tensor):
    """Linear light in [0, 1] -> sRGB-encoded values."""
    if isinstance(x, Tensor):
        x = x.clamp(0, 1)
        return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)
