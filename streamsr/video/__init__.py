"""Video input and output: decode files, images and streams to RGB frames; encode and mux them back."""

from streamsr.video.color import ColorInfo
from streamsr.video.source import Frame, Source, VideoInfo, open_source

__all__ = ["ColorInfo", "Frame", "Source", "VideoInfo", "open_source"]
