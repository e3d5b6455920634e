"""Facts about a model: config, parameter count, and measured compute per input pixel."""

from __future__ import annotations

from dataclasses import asdict, replace

import torch
from torch import nn

from streamsr.models.configs import CONFIGS, DeblurSRConfig
from streamsr.models.deblur_sr import DeblurSR, count_parameters


def macs_per_pixel(model: nn.Module, size: tuple[int, int] = (64, 64)) -> float:
    """Multiply-accumulates per input (LR) pixel, counted by running the model once.

    Counted with PyTorch's FlopCounterMode (convolutions and matmuls; FLOPs / 2 = MACs) on a
    `size` RGB input; sizes that are multiples of 8 avoid counting padding. The input is made on
    the model's device, so a model built on the "meta" device is counted without computing.
    """
    from torch.utils.flop_counter import FlopCounterMode  # here: its import is slow

    h, w = size
    first = next(iter(model.parameters()), None)
    x = torch.zeros(1, 3, h, w, device=first.device if first is not None else None)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 2 / (h * w)


# Figures of the named configs as `count_parameters` and `macs_per_pixel` (64x64, meta device)
# count them: (parameters, trunk parameters, MACs per input pixel). `config_info` prints them
# without building a model; tests/test_models.py recounts every row.
KNOWN: dict[str, tuple[int, int, float]] = {
    "paper": (21_839_972, 20_127_073, 14_306_617.03125),
    "lite": (1_474_596, 1_181_185, 1_203_708.908203125),
    "lean": (647_528, 457_381, 674_297.26953125),
    "tiny": (112_088, 99_301, 72_541.2265625),
}


def _known(config: DeblurSRConfig) -> tuple[int, int, float] | None:
    """The table row of a config that is one of the named ones (whatever its `name`)."""
    for name, figures in KNOWN.items():
        if replace(CONFIGS[name], name=config.name) == config:
            return figures
    return None


def config_info(config: DeblurSRConfig, measure: bool = True) -> dict:
    """`model_info` from a config alone: the known figures of a named config, else counted on
    the meta device (shapes only: nothing is allocated or computed)."""
    figures = _known(config)
    if figures is None:
        with torch.device("meta"):
            return model_info(DeblurSR(config), measure)
    total, trunk, macs = figures
    info = {"name": config.name, "config": asdict(config), "scale": config.scale,
            "parameters": total, "trunk_parameters": trunk, "head_parameters": total - trunk}
    if measure:
        info.update(_macs_fields(macs))
    return info


def _macs_fields(macs: float) -> dict:
    return {"macs_per_input_pixel": round(macs),
            "gmacs_per_320x180_frame": round(macs * 320 * 180 / 1e9, 2)}


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
        info.update(_macs_fields(macs_per_pixel(model)))
    return info
