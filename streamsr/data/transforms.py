"""Colour curves for data generation: sRGB encoding <-> linear light.

Blur and noise are physical in linear light, so synthetic and shaken training samples are
degraded there and encoded back to sRGB. (The bicubic kernel lives in streamsr.models.ops.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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
