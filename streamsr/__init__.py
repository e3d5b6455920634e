"""streamsr: sharp x4 video from blurry low-resolution footage.

Public API: `load_model`, `DeblurSR`, and `upscale` (files, images, folders, live streams,
resumable and torchrun jobs) with its options object `UpscaleOptions`.
"""

__version__ = "0.1.0"

from streamsr.api import upscale  # noqa: E402
from streamsr.errors import StreamsrError  # noqa: E402
from streamsr.jobs.stats import Stats  # noqa: E402
from streamsr.models import DeblurSR, DeblurSRConfig  # noqa: E402
from streamsr.models.weights import load_model, save_model  # noqa: E402
from streamsr.options import UpscaleOptions  # noqa: E402

__all__ = ["DeblurSR", "DeblurSRConfig", "StreamsrError", "load_model", "save_model", "Stats", "UpscaleOptions",
           "upscale", "__version__"]
