"""The resampling kernel of the project, beside the network that uses it.

Bicubic means one thing in this project: PyTorch's `interpolate(mode="bicubic",
antialias=True)`, the Keys kernel with a = -0.5 widened by the scale factor when shrinking.
That is PIL's BICUBIC and, up to rounding, MATLAB's `imresize`, which produced the LR inputs of
the SR literature the paper compares with. OpenCV's INTER_CUBIC (a = -0.75, no anti-aliasing)
aliases badly on x4 down-sampling, so it is not used. The model's own up-sampling, training
triplets, evaluation inputs, the bicubic baseline and `--side-by-side` all go through
`resize_bicubic`. It lives in models/ because the network needs it and the network imports
nothing from data/; data, inference and evaluation import it from here.
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
