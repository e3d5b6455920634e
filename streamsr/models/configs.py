"""Named model configurations, as plain dataclasses.

`paper` is the exact model of Shoyan et al. (21,839,972 parameters). `lite` keeps the same
structure with narrower features so it trains and runs on a 2-core CPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

from streamsr.errors import ConfigError


@dataclass(frozen=True)
class MPRNetConfig:
    """The MPRNet trunk. Defaults are MPRNet's deblurring configuration (20,127,073 params)."""

    n_feat: int = 96
    scale_unetfeats: int = 48
    scale_orsnetfeats: int = 32
    num_cab: int = 8
    kernel_size: int = 3
    reduction: int = 4


@dataclass(frozen=True)
class DeblurSRConfig:
    """The joint model: trunk + three refinement CABs + fusion conv + x4 reconstruction."""

    trunk: MPRNetConfig = field(default_factory=MPRNetConfig)
    sr_feat: int = 64  # width of the fusion output and of the reconstruction module
    sr_blocks: int = 8  # residual blocks in the reconstruction module
    # Beyond the paper: add a bicubic x4 of the input to the reconstruction's output (no
    # sigmoid, last conv zero-initialised), so an untrained model starts as bicubic and training
    # only has to learn the correction. Off for `paper` (exact); on for `lite`, which trains in
    # minutes on a CPU rather than 21 epochs on a GPU.
    bicubic_skip: bool = False
    name: str = "custom"

    @property
    def scale(self) -> int:
        """Upscaling factor: the reconstruction has two pixel-shuffle x2 steps."""
        return 4

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> DeblurSRConfig:
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        trunk = data.pop("trunk", {})
        if isinstance(trunk, dict):
            tknown = {f.name for f in fields(MPRNetConfig)}
            if set(trunk) - tknown:
                raise ConfigError(f"unknown trunk config keys: {sorted(set(trunk) - tknown)}")
            trunk = MPRNetConfig(**trunk)
        cfg = cls(trunk=trunk, **data)
        _check_limits(cfg)
        return cfg

    @classmethod
    def from_json(cls, text: str) -> DeblurSRConfig:
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"malformed model config: {exc}") from None


# Sane ranges for configs read from files: a hostile config must not make us build millions of
# modules or gigabytes of weights (the paper model is far inside them).
_LIMITS = {"n_feat": (1, 512), "scale_unetfeats": (0, 512), "scale_orsnetfeats": (0, 512),
           "num_cab": (1, 64), "kernel_size": (1, 15), "reduction": (1, 64), "sr_feat": (1, 512),
           "sr_blocks": (0, 128)}


def _check_limits(cfg: DeblurSRConfig) -> None:
    """Refuse config values of the wrong type or far outside any real model's range."""
    if not isinstance(cfg.trunk, MPRNetConfig):
        raise ConfigError("model config: trunk must be a table of trunk settings")
    values = {**asdict(cfg.trunk), "sr_feat": cfg.sr_feat, "sr_blocks": cfg.sr_blocks}
    for key, (lo, hi) in _LIMITS.items():
        v = values[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ConfigError(f"model config: {key} must be an integer in [{lo}, {hi}], got {v!r}")
    # shapes the layers accept but the forward pass cannot (a traceback on the first frame)
    if cfg.trunk.kernel_size % 2 == 0:
        raise ConfigError(f"model config: kernel_size must be odd ('same' convolutions), got "
                          f"{cfg.trunk.kernel_size}")
    if cfg.trunk.reduction > cfg.trunk.n_feat:
        raise ConfigError(f"model config: reduction {cfg.trunk.reduction} is larger than n_feat "
                          f"{cfg.trunk.n_feat} (channel attention would have no channels)")
    if not isinstance(cfg.bicubic_skip, bool) or not isinstance(cfg.name, str):
        raise ConfigError("model config: bicubic_skip must be true/false and name a string")


# The paper's model: MPRNet deblurring trunk (n_feat 96) + GFN-style reconstruction (64 wide).
PAPER = DeblurSRConfig(name="paper")

# Same structure, about 1/3.5 of the width: n_feat 24 (U-Net scales 24/36/48, ORSNet 40 wide),
# 4 CABs per ORS block, a 32-wide reconstruction: about 1.5 M parameters, sized to run on a CPU
# (timings: docs/benchmarks.md). Widths are multiples of 4 so channel attention (reduction 4)
# stays integral.
LITE = DeblurSRConfig(
    trunk=MPRNetConfig(n_feat=24, scale_unetfeats=12, scale_orsnetfeats=16, num_cab=4),
    sr_feat=32,
    sr_blocks=8,
    bicubic_skip=True,
    name="lite",
)

# The paper's family at the size a 2-core CPU trains fastest: two-thirds of lite's trunk width
# (n_feat 16, U-Net 16/24/32, ORSNet 28 wide), 2 CABs per ORS block, and half the reconstruction
# depth (4 blocks, 32 wide). About half of lite's CPU cost per training step, so twice the steps
# in the same time; still one joint network whose stage features feed the x4 reconstruction.
LEAN = DeblurSRConfig(
    trunk=MPRNetConfig(n_feat=16, scale_unetfeats=8, scale_orsnetfeats=12, num_cab=2),
    sr_feat=32,
    sr_blocks=4,
    bicubic_skip=True,
    name="lean",
)

# Smallest useful model, for tests and examples that need speed rather than quality.
TINY = DeblurSRConfig(
    trunk=MPRNetConfig(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1),
    sr_feat=8,
    sr_blocks=1,
    name="tiny",
)

CONFIGS: dict[str, DeblurSRConfig] = {"paper": PAPER, "lite": LITE, "lean": LEAN, "tiny": TINY}


def get_config(name: str) -> DeblurSRConfig:
    """A named configuration (`paper`, `lite`, `lean`, `tiny`)."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}") from None


__all__ = ["MPRNetConfig", "DeblurSRConfig", "PAPER", "LITE", "LEAN", "TINY", "CONFIGS", "get_config", "replace"]
