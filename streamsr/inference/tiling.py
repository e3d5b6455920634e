"""Overlapping tiles for frames too large to run whole, stitched without seams.

Every tile window has the same size (so tiles batch together and a compiled model sees one
shape) and starts on a multiple of `align`. Neighbouring windows overlap by at least
`2 * overlap` LR pixels; the boundary between two tiles is the middle of their overlap, so every
output pixel is taken from a window whose edges (other than image edges) are at least `overlap`
pixels away. With `feather` > 0 neighbours cross-fade linearly over `feather` px around that
boundary instead of meeting edge to edge, which leaves `overlap - feather / 2` px of margin.
For a model whose receptive field reaches no further than the margin (and whose stride pattern
repeats every `align` px), the stitched result equals the whole-frame result up to float
rounding. MPRNet is not such a model (stages 1-2 split each input at its centre lines, channel
attention pools globally, the receptive field is far wider than any overlap): its tiles only
approximate the whole frame, and cross-fading hides the seams (tests/test_engine.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Span:
    """One window along an axis: input [start, stop), output kept for [keep_start, keep_stop)."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def plan_axis(size: int, tile: int, overlap: int, align: int = 8) -> list[Span]:
    """Windows of equal length covering [0, size); starts are multiples of `align`.

    `tile` is the core length each window contributes (LR px); windows are `tile + 2 * overlap`
    long, rounded up to `align` and clipped to `size`. `size` should be a multiple of `align`
    (the engine pads frames to it) for all starts to be aligned.
    """
    if tile < align:
        raise ValueError(f"tile ({tile}) must be at least the alignment ({align})")
    window = min(size, -(-(tile + 2 * overlap) // align) * align)
    if window >= size:
        return [Span(0, size, 0, size)]
    step_max = (window - 2 * overlap) // align * align
    if step_max < align:
        raise ValueError(f"overlap {overlap} leaves no room in a {window}-px window")
    n = math.ceil((size - window) / step_max) + 1
    span = (size - window) / (n - 1)
    starts = [round(i * span / align) * align for i in range(n - 1)] + [size - window]
    bounds = [0] + [(starts[i + 1] + starts[i] + window) // 2 for i in range(n - 1)] + [size]
    return [Span(s, s + window, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def tile_count(height: int, width: int, tile: int, overlap: int, align: int = 8) -> int:
    """How many tiles one frame of this (padded) size splits into."""
    return len(plan_axis(height, tile, overlap, align)) * len(plan_axis(width, tile, overlap, align))


def _ramp(span: Span, size: int, feather: int, scale: int, device: torch.device) -> tuple[int, int, Tensor]:
    """Output rows [lo, hi) a window writes (HR px) and their weights along one axis.

    Inside its keep range a window has weight 1; across each inner boundary the weight falls
    linearly over `feather` LR px, mirrored by the neighbour's rise, so weights sum to 1.
    """
    half = feather / 2
    lo = span.keep_start - (half if span.keep_start > 0 else 0)
    hi = span.keep_stop + (half if span.keep_stop < size else 0)
    lo_px, hi_px = max(span.start * scale, math.floor(lo * scale)), min(span.stop * scale, math.ceil(hi * scale))
    centres = (torch.arange(lo_px, hi_px, device=device, dtype=torch.float64) + 0.5) / scale
    weight = torch.ones_like(centres)
    if feather and span.keep_start > 0:
        weight = torch.minimum(weight, ((centres - lo) / feather).clamp(0, 1))
    if feather and span.keep_stop < size:
        weight = torch.minimum(weight, ((hi - centres) / feather).clamp(0, 1))
    return lo_px, hi_px, weight


def run_tiled(fn: Callable[[Tensor], Tensor], x: Tensor, *, tile: int, overlap: int, scale: int,
              feather: int = 0, tiles_per_call: int = 4, align: int = 8) -> Tensor:
    """Apply `fn` (float NCHW -> float NC(sH)(sW)) to `x` through overlapping tiles.

    `feather` = 0 stitches by cropping at the middle of each overlap; `feather` > 0 (at most
    `overlap`) cross-fades neighbours linearly over that many LR px around the middle instead,
    which hides seams of non-local models, at the price of a smaller exact margin
    (`overlap - feather / 2`) for local ones. Tiles of all frames are batched
    `tiles_per_call` at a time; the result is assembled on `x`'s device in float32.
    """
    if not 0 <= feather <= overlap:
        raise ValueError(f"feather ({feather}) must be between 0 and the overlap ({overlap})")
    n, _, h, w = x.shape
    rows, cols = plan_axis(h, tile, overlap, align), plan_axis(w, tile, overlap, align)
    wr = [_ramp(r, h, feather, scale, x.device) for r in rows]
    wc = [_ramp(c, w, feather, scale, x.device) for c in cols]
    jobs = [(i, a, b) for i in range(n) for a in range(len(rows)) for b in range(len(cols))]
    out: Tensor | None = None
    step = max(1, tiles_per_call)
    for k in range(0, len(jobs), step):
        chunk = jobs[k:k + step]
        batch = torch.stack([x[i, :, rows[a].start:rows[a].stop, cols[b].start:cols[b].stop]
                             for i, a, b in chunk])
        y = fn(batch).float()
        if out is None:
            out = y.new_zeros((n, y.shape[1], h * scale, w * scale))
        for j, (i, a, b) in enumerate(chunk):
            (y0, y1, ry), (x0, x1, rx) = wr[a], wc[b]
            oy, ox = rows[a].start * scale, cols[b].start * scale
            part = y[j, :, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            if feather:
                part = part * (ry[:, None] * rx[None, :]).to(part.dtype)
            out[i, :, y0:y1, x0:x1] += part
    assert out is not None
    return out
