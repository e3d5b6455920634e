"""Decoded video frames -> RGB arrays: the one conversion every video input uses (files, URLs
and live feeds), the --max-pixels check, and the way back (RGB -> an encoder's Y'CbCr).

Y'CbCr -> RGB uses the input's matrix and range (see `color`) with swscale's exact flags.
Frames are RGB uint8, or RGB uint16 (rgb48) for `deep` inputs, so a 10-bit output keeps 10 bits.
(swscale maps limited-range white to 65283, not 65535, and maps 65283 back to white on the way
out, so the gain cancels; the model sees deep frames 0.4 % darker.) A stream can change size
mid-way (a spliced MPEG-TS, a camera switching modes): the output keeps one size, so frames of
another size are scaled to the first one's, after the new size passed the --max-pixels check.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import ColorRange, Interpolation

from streamsr.errors import InputError
from streamsr.video.color import effective_matrix, effective_range, sws_matrix, sws_range
from streamsr.video.ffmpeg import FROM_RGB_FLAGS, TO_RGB_FLAGS

if TYPE_CHECKING:
    from streamsr.video.source import VideoInfo

log = logging.getLogger(__name__)


def check_pixels(uri: str, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse a frame size of nothing, or one past `max_pixels` (--max-pixels), in one line."""
    if width <= 0 or height <= 0:
        raise InputError(f"{uri}: video stream has no size ({width}x{height})")
    if max_pixels and width * height > max_pixels:
        raise InputError(f"{uri}: {width}x{height} frames are larger than the limit of "
                         f"{max_pixels} pixels (raise --max-pixels to allow them)")


class RgbConverter:
    """Turns the decoded frames of one input into C-contiguous RGB arrays of `info`'s size."""

    def __init__(self, uri: str, info: VideoInfo, *, deep: bool = False,
                 max_pixels: int | None = None) -> None:
        self.uri = uri
        self.width, self.height = info.width, info.height
        self.format = "rgb48le" if deep else "rgb24"
        self.max_pixels = max_pixels
        self._matrix = sws_matrix(effective_matrix(info))
        self._range = sws_range(effective_range(info))
        self._warned = False

    def __call__(self, frame: av.VideoFrame, index: int) -> np.ndarray:
        """`frame` (the `index`-th, 0-based) as (H, W, 3) uint8 or uint16 RGB."""
        if (frame.width, frame.height) != (self.width, self.height):
            frame = self._to_first_size(frame, index)
        rgb = frame.to_ndarray(format=self.format, src_colorspace=self._matrix,
                               src_color_range=self._range, dst_color_range=ColorRange.JPEG,
                               interpolation=TO_RGB_FLAGS)
        return np.ascontiguousarray(rgb)

    def _to_first_size(self, frame: av.VideoFrame, index: int) -> av.VideoFrame:
        """A frame whose size differs from the first frame's, scaled back to it (one warning).
        A size past --max-pixels is refused first."""
        w, h = self.width, self.height
        change = f"frame size changes at frame {index + 1}: {w}x{h} -> {frame.width}x{frame.height}"
        if self.max_pixels and frame.width * frame.height > self.max_pixels:
            raise InputError(f"{self.uri}: {change}, larger than the limit of {self.max_pixels} "
                             f"pixels (raise --max-pixels to allow them)")
        if not self._warned:
            self._warned = True
            log.warning("%s: %s; scaling frames of other sizes to %dx%d", self.uri, change, w, h)
        return frame.reformat(width=w, height=h, interpolation=Interpolation.BICUBIC)


def rgb_to_yuv(frame: av.VideoFrame, pix_fmt: str, matrix: str, color_range: str) -> av.VideoFrame:
    """An RGB frame (rgb24 or rgb48) in an encoder's Y'CbCr `pix_fmt`, converted with the matrix
    and range ("tv" or "pc") the output is tagged with: the inverse of `RgbConverter`."""
    return frame.reformat(format=pix_fmt, dst_colorspace=sws_matrix(matrix),
                          dst_color_range=sws_range(color_range), interpolation=FROM_RGB_FLAGS)
