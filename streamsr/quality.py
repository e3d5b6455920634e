"""How close an upscaled video is to its ground truth, and how much better than bicubic it is.

Videos are decoded with the pipeline's own `open_source` (so colours are read the way the
pipeline reads them), compared frame by frame with `streamsr.metrics` (PSNR and SSIM
on RGB in [0, 1], or on luma with `y_channel=True`), and the per-frame values averaged, the
usual way video SR results are reported. With the low-resolution input, the same is measured for
its bicubic x4 upscale (the project's kernel): the margin is what the model adds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from itertools import zip_longest

import numpy as np
import torch
from tqdm import tqdm

from streamsr.errors import InputError
from streamsr.metrics import psnr, rgb_to_y, ssim
from streamsr.models.ops import bicubic_uint8
from streamsr.video.source import open_source

log = logging.getLogger(__name__)

SCALE = 4

__all__ = ["QualityReport", "compare_videos", "frame_scores"]


@dataclass
class QualityReport:
    """Mean per-frame PSNR (dB) and SSIM of `output` (and of bicubic x4 of `input`) vs `reference`."""

    output: str
    reference: str
    input: str | None
    frames: int
    width: int
    height: int
    y_channel: bool
    psnr: float
    ssim: float
    bicubic_psnr: float | None = None
    bicubic_ssim: float | None = None
    # Temporal consistency: PSNR between the frame-to-frame differences of this video and those of
    # the reference (mean over consecutive pairs). A per-frame model that shimmers or flickers
    # adds changes the reference does not have and scores lower; NaN with fewer than two frames.
    temporal_psnr: float = math.nan
    bicubic_temporal_psnr: float | None = None
    psnr_per_frame: list[float] = field(default_factory=list, repr=False)
    ssim_per_frame: list[float] = field(default_factory=list, repr=False)

    @property
    def psnr_margin(self) -> float | None:
        """dB gained over bicubic (None without an input)."""
        return None if self.bicubic_psnr is None else self.psnr - self.bicubic_psnr

    @property
    def ssim_margin(self) -> float | None:
        return None if self.bicubic_ssim is None else self.ssim - self.bicubic_ssim

    @property
    def temporal_margin(self) -> float | None:
        """dB of temporal consistency over bicubic's: negative means more flicker than bicubic."""
        if self.bicubic_temporal_psnr is None:
            return None
        return self.temporal_psnr - self.bicubic_temporal_psnr

    def to_dict(self, per_frame: bool = False) -> dict:
        """Plain data for JSON: the means, the margins, and optionally the per-frame values."""
        d = asdict(self)
        if not per_frame:
            d.pop("psnr_per_frame")
            d.pop("ssim_per_frame")
        d["psnr_margin"] = self.psnr_margin
        d["ssim_margin"] = self.ssim_margin
        d["temporal_margin"] = self.temporal_margin
        return d


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].double() / 255.0


def frame_scores(x: np.ndarray, y: np.ndarray, y_channel: bool = False) -> tuple[float, float]:
    """(PSNR, SSIM) of two uint8 HWC RGB frames; identical frames score 200 dB (the metric's cap)."""
    a, b = _tensor(x), _tensor(y)
    return float(psnr(a, b, y_channel=y_channel)), float(ssim(a, b, y_channel=y_channel))


class _TemporalScore:
    """PSNR between consecutive-frame differences of a video and of its reference, per pair."""

    def __init__(self, y_channel: bool) -> None:
        self.y_channel = y_channel
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None
        self.values: list[float] = []

    def add(self, frame: np.ndarray, ref: np.ndarray) -> None:
        a, b = _tensor(frame), _tensor(ref)
        if self.y_channel:
            a, b = rgb_to_y(a), rgb_to_y(b)
        if self.prev is not None:
            da, db = a - self.prev[0], b - self.prev[1]
            mse = float(((da - db) ** 2).mean())
            self.values.append(10 * math.log10(1.0 / max(mse, 1e-20)))
        self.prev = (a, b)

    def mean(self) -> float:
        return _mean(self.values)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _count_rest(it) -> int:
    return sum(1 for _ in it)


def compare_videos(output: str, reference: str, input: str | None = None, *,
                   y_channel: bool = False, progress: bool = False,
                   frames: int | None = None) -> QualityReport:
    """Decode `output`, `reference` (and `input`) in lockstep and score every frame.

    The output must have the reference's size and frame count; the input must be exactly x4
    smaller with the same frame count. Anything else is an `InputError` that says what differs.
    `frames`: score only the first N frames of each (e.g. an output made with `--frames N`).
    """
    if frames is not None and frames < 1:
        raise InputError(f"frames must be at least 1, got {frames}")
    sources = [open_source(output), open_source(reference)]
    try:
        if input is not None:
            sources.append(open_source(input))
        out_i, ref_i = sources[0].info, sources[1].info
        if (out_i.width, out_i.height) != (ref_i.width, ref_i.height):
            raise InputError(f"{output} is {out_i.width}x{out_i.height} but the reference "
                             f"{reference} is {ref_i.width}x{ref_i.height}")
        if input is not None:
            in_i = sources[2].info
            if (in_i.width * SCALE, in_i.height * SCALE) != (ref_i.width, ref_i.height):
                raise InputError(f"the input {input} is {in_i.width}x{in_i.height}; x{SCALE} that "
                                 f"is not the reference's {ref_i.width}x{ref_i.height}")
        names = [output, reference] + ([input] if input is not None else [])
        p_out, s_out, p_bic, s_bic = [], [], [], []
        t_out, t_bic = _TemporalScore(y_channel), _TemporalScore(y_channel)
        iters = [iter(s) for s in sources]
        bar = tqdm(total=ref_i.frames, unit="frame", desc="compare", disable=not progress)
        n = 0
        for group in zip_longest(*iters):
            if any(f is None for f in group):
                counts = [n + (f is not None) + (_count_rest(it) if f is not None else 0)
                          for f, it in zip(group, iters, strict=True)]
                detail = ", ".join(f"{name}: {c}" for name, c in zip(names, counts, strict=True))
                raise InputError(f"frame counts differ ({detail})")
            out, ref = group[0].rgb, group[1].rgb
            p, s = frame_scores(out, ref, y_channel)
            p_out.append(p)
            s_out.append(s)
            t_out.add(out, ref)
            if input is not None:
                up = bicubic_uint8(group[2].rgb, (ref.shape[0], ref.shape[1]))
                p, s = frame_scores(up, ref, y_channel)
                p_bic.append(p)
                s_bic.append(s)
                t_bic.add(up, ref)
            n += 1
            bar.update()
            if frames is not None and n >= frames:
                break
        bar.close()
        if n == 0:
            raise InputError(f"{reference} has no frames")
    finally:
        for s in sources:
            s.close()
    report = QualityReport(
        output=str(output), reference=str(reference), input=None if input is None else str(input),
        frames=n, width=ref_i.width, height=ref_i.height, y_channel=y_channel,
        psnr=_mean(p_out), ssim=float(np.mean(s_out)),
        bicubic_psnr=_mean(p_bic) if p_bic else None,
        bicubic_ssim=float(np.mean(s_bic)) if s_bic else None,
        temporal_psnr=t_out.mean(),
        bicubic_temporal_psnr=t_bic.mean() if p_bic else None,
        psnr_per_frame=p_out, ssim_per_frame=s_out)
    log.info("%s vs %s: %d frames, PSNR %.3f dB, SSIM %.4f", output, reference, n, report.psnr,
             report.ssim)
    return report
