"""`streamsr serve`: many streams through one shared model, with HTTP status and metrics."""

from streamsr.serve.app import serve
from streamsr.serve.config import ServeConfig, ServeConfigError, StreamConfig, load_config

__all__ = ["ServeConfig", "ServeConfigError", "StreamConfig", "load_config", "serve"]
