"""Models: the MPRNet trunk, the joint deblur-SR network, configs and weight files.

The configs are plain dataclasses and import at once; the networks (torch) are imported on
first use, so code that only reads configs (`streamsr --help`, config checks) stays fast.
"""

from streamsr.lazy import lazy_exports
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

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
