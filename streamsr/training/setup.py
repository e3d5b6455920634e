"""What a run is built from: seeds, numeric precision, the model, the optimiser and schedule.

Adam + cosine annealing to `lr_min` (per optimizer step); mixed precision by the runtime's
policy for training (`streamsr.runtime.resolve_precision(..., training=True)`), with a gradient
scaler for fp16.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from streamsr.errors import ConfigError, WeightsError
from streamsr.models import DeblurSR, get_config
from streamsr.models.weights import import_mprnet, load_weights, model_config
from streamsr.runtime import resolve_precision
from streamsr.training.recipe import Recipe


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every RNG; in deterministic mode also pin cuDNN/cuBLAS to reproducible kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def autocast_dtype(recipe: Recipe, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32), by the runtime's policy for training."""
    dtype = resolve_precision(recipe.precision, dev, training=True)
    return None if dtype == torch.float32 else dtype


def precision_name(dtype: torch.dtype | None) -> str:
    """The recipe's word for an autocast dtype (as stored in checkpoints and messages)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(dev: torch.device, dtype: torch.dtype | None):
    """Mixed precision when `dtype` is set, else nothing (plain fp32)."""
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def build_model(recipe: Recipe, init_mprnet: str | os.PathLike | None,
                init: str | os.PathLike | None) -> DeblurSR:
    """A model of the recipe's config: random, from an MPRNet checkpoint, or from weights."""
    if init_mprnet and init:
        raise ConfigError("give --init-mprnet or --init, not both")
    cfg = get_config(recipe.model)
    if init_mprnet:
        if recipe.model != "paper":
            raise ConfigError(f"--init-mprnet loads the paper-size trunk, but the recipe's model is "
                              f"{recipe.model!r}; use --set model=paper")
        return import_mprnet(init_mprnet, seed=recipe.seed)
    model = DeblurSR(cfg)
    if init:
        have = model_config(init)
        if replace(have, name=cfg.name) != cfg:
            raise WeightsError(f"{init} holds a {have.name!r} model, not the recipe's "
                               f"{recipe.model!r} model")
        load_weights(model, init)
    return model


def cosine(recipe: Recipe, total_steps: int) -> Callable[[int], float]:
    """LR multiplier at step t: cosine from lr down to lr_min over the run (closed form)."""
    ratio = recipe.lr_min / recipe.lr

    def factor(t: int) -> float:
        progress = min(t, total_steps) / max(1, total_steps)
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


@dataclass
class Optimisation:
    """The optimiser, its learning-rate schedule and the fp16 gradient scaler, saved together."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])


def build_optimisation(model: torch.nn.Module, recipe: Recipe, total_steps: int,
                       dev: torch.device, dtype: torch.dtype | None) -> Optimisation:
    """Adam, the cosine schedule over `total_steps`, and a scaler that is on only for fp16."""
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas,
                           weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(recipe, total_steps))
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    return Optimisation(opt, sched, scaler)


__all__ = ["Optimisation", "autocast", "autocast_dtype", "build_model", "build_optimisation",
           "cosine", "precision_name", "seed_everything"]
