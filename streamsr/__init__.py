"""streamsr: sharp x4 video from blurry low-resolution footage.

Public API: `load_model`, `DeblurSR`, and `upscale` (files, images, folders, live streams,
resumable and torchrun jobs) with its options object `UpscaleOptions`.
"""

__version__ = "0.1.0"

from streamsr.errors import StreamsrError  # noqa: E402

# The rest is imported on first use (PEP 562), so `import streamsr` (and `streamsr --help`) does
# not pay for importing torch, PyAV and the model until they are needed.
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


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamsr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
