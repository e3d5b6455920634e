"""Facts about a model: config, parameter count, and measured compute per input pixel."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from streamsr.models.deblur_sr import DeblurSR, count_parameters


def macs_per_pixel(model: nn.Module, size: tuple[int, int] = (64, 64)) -> float:
    """Multiply-accumulates per input (LR) pixel, counted by running the model once.

    Counted with PyTorch's FlopCounterMode (convolutions and matmuls; FLOPs / 2 = MACs) on a
    `size` RGB input; sizes that are multiples of 8 avoid counting padding. The input is made on
    the model's device, so a model built on the "meta" device is counted without computing.
    """
    h, w = size
    first = next(iter(model.parameters()), None)
    x = torch.zeros(1, 3, h, w, device=first.device if first is not None else None)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 2 / (h * w)


def model_info(model: DeblurSR, measure: bool = True) -> dict:
    """A JSON-ready summary: config, parameters (trunk / head), MACs per input pixel."""
    total = count_parameters(model)
    trunk = count_parameters(model.trunk)
    info = {
        "name": model.config.name,
        "config": asdict(model.config),
        "scale": model.config.scale,
        "parameters": total,
        "trunk_parameters": trunk,
        "head_parameters": total - trunk,
    }
    if measure:
        macs = macs_per_pixel(model)
        info["macs_per_input_pixel"] = round(macs)
        info["gmacs_per_320x180_frame"] = round(macs * 320 * 180 / 1e9, 2)
    return info
