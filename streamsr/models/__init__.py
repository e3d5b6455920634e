"""Models: the MPRNet trunk, the joint deblur-SR network, configs and weight files.

The configs are plain dataclasses and import at once; the networks (torch) are imported on
first use, so code that only reads configs (`streamsr --help`, config checks) stays fast.
"""

from streamsr.models.configs import (
           CONFIGS,
           LITE,
           PAPER,
           TINY,
           DeblurSRConfig,
           MPRNetConfig,
           get_config,
)

_LAZY = {"DeblurSR": "streamsr.models.deblur_sr", "DeblurSROutput": "streamsr.models.deblur_sr",
         "count_parameters": "streamsr.models.deblur_sr", "MPRNet": "streamsr.models.mprnet",
         "TrunkOutput": "streamsr.models.mprnet"}

__all__ = ["CONFIGS", "LITE", "PAPER", "TINY", "DeblurSR", "DeblurSRConfig", "DeblurSROutput",
           "MPRNet", "MPRNetConfig", "TrunkOutput", "count_parameters", "get_config"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamsr.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
