"""How the engine hands x4 frames to the encoder: RGB24, or YUV 4:2:0 planes made on the device.

Most outputs are H.264/HEVC in yuv420p. Quantising the model's float output to RGB24 and then
converting RGB24 to YUV with swscale costs two full passes over every x4 frame on the host; doing
the colour matrix and the 2x2 chroma average in torch, straight from the float output, costs a
fraction of that on a CPU (docs/architecture.md has the measurement) and halves the bytes read
back from a GPU (1.5 instead of 3 per pixel). The result matches swscale's
accurate conversion to within one code value in luma (tests/test_pack.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Luma coefficients (Kr, Kb) of the matrices the sink can tag, by their FFmpeg names.
_COEFFICIENTS: dict[str, tuple[float, float]] = {
    "bt709": (0.2126, 0.0722),
    "smpte170m": (0.299, 0.114),
    "bt470bg": (0.299, 0.114),
    "bt2020nc": (0.2627, 0.0593),
}


@dataclass(frozen=True)
class Yuv420:
    """An 8-bit Y'CbCr 4:2:0 target: the matrix's luma coefficients and the code-value range."""

    kr: float
    kb: float
    full_range: bool = False

    @classmethod
    def for_matrix(cls, matrix: str, colour_range: str) -> Yuv420 | None:
        """The target for an FFmpeg matrix name and range ("tv"/"pc"), or None when unsupported."""
        if matrix not in _COEFFICIENTS or colour_range not in ("tv", "pc"):
            return None
        kr, kb = _COEFFICIENTS[matrix]
        return cls(kr, kb, colour_range == "pc")

    @property
    def luma_offset(self) -> float:
        return 0.0 if self.full_range else 16.0

    def luma_scales(self) -> tuple[float, float, float]:
        """Code values of full R, G and B in luma (offset not included)."""
        span = 255.0 if self.full_range else 219.0
        return self.kr * span, (1.0 - self.kr - self.kb) * span, self.kb * span

    def chroma_weights(self, device: torch.device) -> Tensor:
        """Cb, Cr (2x3x1x1, code values) per summed 2x2 block of RGB, offset 128 not included.

        Made once per device (a host-to-GPU copy per batch could stall the CUDA pipeline).
        """
        return _chroma_weights(self, torch.device(device))

    def _make_chroma_weights(self, device: torch.device) -> Tensor:
        kr, kb = self.kr, self.kb
        kg = 1.0 - kr - kb
        c_span = 255.0 if self.full_range else 224.0
        cb = torch.tensor([-kr, -kg, 1.0 - kb]) * (c_span / (2.0 * (1.0 - kb)))
        cr = torch.tensor([1.0 - kr, -kg, -kb]) * (c_span / (2.0 * (1.0 - kr)))
        chroma = torch.stack([cb, cr]) / 4.0  # applied to the sum of a 2x2 block: its mean
        return chroma.view(2, 3, 1, 1).to(device)


@functools.lru_cache(maxsize=32)
def _chroma_weights(target: Yuv420, device: torch.device) -> Tensor:
    return target._make_chroma_weights(device)


def to_rgb24(y: Tensor) -> Tensor:
    """float NCHW in [0, 1] (unclamped; overwritten) -> uint8 NHWC, rounded to nearest."""
    return y.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_rgb48(y: Tensor) -> Tensor:
    """float NCHW in [0, 1] (unclamped; overwritten) -> uint16 NHWC, rounded to nearest."""
    return y.mul_(65535.0).round_().clamp_(0, 65535).to(torch.uint16).permute(0, 2, 3, 1).contiguous()


def to_yuv420p(y: Tensor, target: Yuv420) -> Tensor:
    """float NCHW RGB in [0, 1] (unclamped; overwritten) -> uint8 (N, 3H/2, W) yuv420p planes.

    Each frame is PyAV's `VideoFrame.from_ndarray(..., format="yuv420p")` layout: the H x W luma
    plane, then Cb and Cr at H/2 x W/2, back to back. The RGB values are clamped first (as the
    RGB24 path does), chroma is the matrix applied to the mean of each 2x2 block (centred
    siting, like swscale's area filter). H and W must be even.
    """
    n, c, h, w = y.shape
    if c != 3 or h % 2 or w % 2:
        raise ValueError(f"yuv420p needs 3-channel frames with even sides, got {tuple(y.shape)}")
    chroma_w, y_off = target.chroma_weights(y.device), target.luma_offset
    y = y.clamp_(0.0, 1.0)
    out = torch.empty(n, h * w * 3 // 2, dtype=torch.uint8, device=y.device)
    # luma as three multiply-adds on the channel planes: unlike a 1x1 convolution they take the
    # engine's cropped (non-contiguous) output as it is, without an 11 MB copy per 720p frame
    kr, kg, kb = target.luma_scales()
    luma = torch.mul(y[:, 0], kr).add_(y[:, 1], alpha=kg).add_(y[:, 2], alpha=kb)
    out[:, :h * w] = luma.add_(y_off).round_().view(n, -1)
    # 2x2 block sums: pairs of rows (contiguous halves of each row pair), then pairs of columns;
    # cheaper on a CPU than avg_pool2d or a strided 2x2 convolution
    rows = y.reshape(n, 3, h // 2, 2 * w)
    pairs = (rows[..., :w] + rows[..., w:]).reshape(n, 3, h // 2, w // 2, 2)
    blocks = pairs[..., 0] + pairs[..., 1]
    out[:, h * w:] = F.conv2d(blocks, chroma_w).add_(128.0).round_().clamp_(0, 255).reshape(n, -1)
    return out.view(n, h * 3 // 2, w)


__all__ = ["Yuv420", "to_rgb24", "to_rgb48", "to_yuv420p"]
