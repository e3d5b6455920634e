"""Validation: PSNR/SSIM of the SR output and of the stage-3 LR image, and the bicubic baseline."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from streamsr.metrics import psnr, ssim
from streamsr.models.ops import resize_bicubic
from streamsr.runtime import DistEnv
from streamsr.training.setup import autocast


@torch.no_grad()
def validate(model: nn.Module, data: Dataset, dev: torch.device, batch: int,
             autocast_dtype: torch.dtype | None, d: DistEnv | None = None) -> dict[str, float]:
    """Mean PSNR/SSIM of the SR output vs H and of the stage-3 LR image vs L (ranks share it).

    Each rank scores every world_size-th triplet; the sums are all-reduced, so every rank
    returns the same numbers as one process would.
    """
    d = d or DistEnv()
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)  # psnr_sr, ssim_sr, psnr_lr, ssim_lr, count, bicubic
    idx = list(range(d.rank, len(data), d.world_size))
    for start in range(0, len(idx), batch):
        items = [data[i] for i in idx[start:start + batch]]
        lr_blur, lr, hr = (torch.stack(t).to(dev) for t in zip(*items, strict=True))
        with autocast(dev, autocast_dtype):
            out = model(lr_blur)
        sr, lr3 = out.hr.float().clamp(0, 1), out.stages[0].float().clamp(0, 1)
        sums[0] += psnr(sr, hr, reduction="none").sum().cpu()
        # the baseline every margin is quoted against: bicubic x4 of the same blurry input
        bic = resize_bicubic(lr_blur.float(), tuple(hr.shape[-2:])).clamp(0, 1)
        sums[5] += psnr(bic, hr, reduction="none").sum().cpu()
        sums[2] += psnr(lr3, lr, reduction="none").sum().cpu()
        if min(lr.shape[-2:]) >= 11:
            sums[1] += ssim(sr, hr, reduction="none").sum().cpu()
            sums[3] += ssim(lr3, lr, reduction="none").sum().cpu()
        sums[4] += len(items)
    if d.world_size > 1:
        sums = sums.to(dev) if dev.type == "cuda" else sums
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.train(was_training)
    n = max(1.0, float(sums[4]))
    res = {"val/psnr_sr": float(sums[0]) / n, "val/psnr_lr3": float(sums[2]) / n,
           "val/psnr_bicubic": float(sums[5]) / n, "val/margin_db": float(sums[0] - sums[5]) / n}
    if min(data[0][1].shape[-2:]) >= 11:
        res.update({"val/ssim_sr": float(sums[1]) / n, "val/ssim_lr3": float(sums[3]) / n})
    return res


__all__ = ["validate"]
