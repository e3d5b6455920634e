"""What travels between the stages and the engine: a batch of pixels with its frames' metadata."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from streamsr.video.source import Frame

Layout = Literal["rgb", "yuv420p"]


@dataclass(frozen=True)
class FrameBatch:
    """Frames that go through the engine together.

    `pixels`: "rgb" layout: uint8 (or uint16, deep sources) NHWC RGB; "yuv420p": uint8
    (N, 3H/2, W) planes as PyAV's `VideoFrame.from_ndarray(..., format="yuv420p")` takes them.
    `frames`: the decoded frames the pixels belong to, one per pixel frame, in order: their
    pts, time_base, duration and name go to the encoder with the engine's output (None for
    plain arrays that have no timestamps). The engine returns the same `frames` with its output
    pixels, so nothing outside the batch has to remember which result belongs to which frame.
    """

    pixels: np.ndarray
    frames: Sequence[Frame] | None = None
    layout: Layout = "rgb"

    def __len__(self) -> int:
        return len(self.pixels)

    @classmethod
    def of(cls, frames: Sequence[Frame]) -> FrameBatch:
        """The RGB pixels of decoded frames (one size, one dtype), stacked, with the frames."""
        return cls(np.stack([f.rgb for f in frames]), tuple(frames))

    def with_pixels(self, pixels: np.ndarray) -> FrameBatch:
        """The same frames with other pixels (the engine's output), RGB or yuv420p planes: RGB
        rows end in 3 channels, plane rows in an even width."""
        layout: Layout = "rgb" if pixels.shape[-1] == 3 else "yuv420p"
        return dataclasses.replace(self, pixels=pixels, layout=layout)


def check_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 or uint16 (N, H, W, 3), C-contiguous, or a clear error for the caller's bug."""
    if not isinstance(frames, np.ndarray) or frames.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"frames must be a uint8 or uint16 numpy array, got "
                        f"{getattr(frames, 'dtype', type(frames))}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (N, H, W, 3) with N >= 1, got {frames.shape}")
    return np.ascontiguousarray(frames)
