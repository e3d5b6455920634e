"""PSNR and SSIM on float images in [0, 1] (NCHW), on RGB or on the BT.601 luma (Y) channel.

SSIM follows Wang et al. 2004 as scikit-image computes it with `gaussian_weights=True`:
11x11 Gaussian window (sigma 1.5), population covariances, K1 = 0.01, K2 = 0.03, averaged over
the valid (un-padded) region and over channels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def rgb_to_y(x: Tensor) -> Tensor:
    """RGB in [0, 1] -> BT.601 studio-range luma in [16/255, 235/255], the SR literature's Y."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) / 255.0 + 16.0 / 255.0


def _prep(x: Tensor, y: Tensor, y_channel: bool) -> tuple[Tensor, Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x[None], y[None]
    x, y = x.double(), y.double()
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    return x, y


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, y_channel: bool = False,
         reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB, per image (`reduction="none"`) or averaged over images."""
    x, y = _prep(x, y, y_channel)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    val = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-20))
    return val if reduction == "none" else val.mean()


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def _filter_valid_cpu(t: Tensor, g: Tensor) -> Tensor:
    """The 'valid' part of filtering each plane of `t` (N, C, H, W) by g g^T (odd, symmetric)."""
    import cv2

    k = g.numpy()
    r = len(k) // 2
    planes = t.reshape(-1, *t.shape[-2:]).numpy()
    out = [cv2.sepFilter2D(p, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]
           for p in planes]
    return torch.from_numpy(np.stack(out)).reshape(*t.shape[:-2], *out[0].shape)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, y_channel: bool = False,
         reduction: str = "mean") -> Tensor:
    """Structural similarity, per image or averaged; images smaller than 11x11 are refused."""
    x, y = _prep(x, y, y_channel)
    if min(x.shape[-2:]) < 11:
        raise ValueError("SSIM needs images of at least 11x11 pixels")
    g = _gaussian_window(device=x.device).sum(0)  # the window is separable: g g^T

    def filt(t: Tensor) -> Tensor:
        if t.device.type == "cpu" and not t.requires_grad:  # OpenCV's separable filter: same float64 values, far faster
            return _filter_valid_cpu(t, g)
        t = t.unfold(-1, 11, 1) @ g  # two 1-D passes as matmuls
        return (t.transpose(-1, -2).contiguous().unfold(-1, 11, 1) @ g).transpose(-1, -2)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    val = s.flatten(1).mean(1)
    return val if reduction == "none" else val.mean()
