"""Models: the MPRNet trunk, the joint deblur-SR network, configs and weight files."""

from streamsr.models.configs import (
           CONFIGS,
           LITE,
           PAPER,
           TINY,
           DeblurSRConfig,
           MPRNetConfig,
           get_config,
)
from streamsr.models.deblur_sr import DeblurSR, DeblurSROutput, count_parameters
from streamsr.models.mprnet import MPRNet, TrunkOutput

__all__ = ["CONFIGS", "LITE", "PAPER", "TINY", "DeblurSR", "DeblurSRConfig", "DeblurSROutput",
           "MPRNet", "MPRNetConfig", "TrunkOutput", "count_parameters", "get_config"]
