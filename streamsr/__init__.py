"""streamsr: sharp x4 video from blurry low-resolution footage.

Public API: `load_model`, `DeblurSR`, and `upscale` (files, images, folders, live streams,
resumable and torchrun jobs) with its options object `UpscaleOptions`.
"""

__version__ = "0.1.0"

from streamsr.errors import StreamsrError  # noqa: E402
from streamsr.lazy import lazy_exports  # noqa: E402

# the rest is imported on first use (streamsr/lazy.py)
_LAZY = {
    "upscale": "streamsr.api",
    "Stats": "streamsr.jobs.stats",
    "DeblurSR": "streamsr.models",
    "DeblurSRConfig": "streamsr.models",
    "load_model": "streamsr.models.weights",
    "save_model": "streamsr.models.weights",
    "UpscaleOptions": "streamsr.options",
}

__all__ = ["DeblurSR", "DeblurSRConfig", "StreamsrError", "load_model", "save_model", "Stats", "UpscaleOptions",
           "upscale", "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
