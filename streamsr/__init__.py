"""streamsr: sharp x4 video from blurry low-resolution footage.

Public API: `load_model`, `DeblurSR`, and (with the video pipeline) `upscale`.
"""

__version__ = "0.1.0"

from streamsr.errors import StreamsrError  # noqa: E402
from streamsr.models import DeblurSR, DeblurSRConfig  # noqa: E402
from streamsr.models.weights import load_model, save_model  # noqa: E402
from streamsr.pipeline import Stats, upscale  # noqa: E402

__all__ = ["DeblurSR", "DeblurSRConfig", "StreamsrError", "load_model", "save_model", "Stats", "upscale", "__version__"]
