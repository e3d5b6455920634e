"""The generated clip every part runs on: a detailed texture panning diagonally, H.264 at 25 fps."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from streamsr.video.ffmpeg import main_video_stream

CLIP_FPS = 25
CLIP_OPTIONS = {"crf": "16", "preset": "veryfast"}  # the source clip: fast to make, detailed


def texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A detailed, tileable RGB texture (fine noise over coarse blobs and stripes), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        0.5 + 0.25 * np.sin(2 * np.pi * (x / width * 3 + y / height * 2)),
        0.5 + 0.25 * np.cos(2 * np.pi * (x / width * 5 - y / height * 3)),
        0.5 + 0.25 * np.sin(2 * np.pi * (x / width * 2 + y / height * 7)),
    ], axis=2)
    # coarse random blobs: noise on a grid of 8 px cells, nearest-upsampled then box-smoothed
    cells = rng.random((height // 8 + 2, width // 8 + 2, 3), dtype=np.float32)
    blobs = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[:height, :width]
    blobs = (blobs + np.roll(blobs, 4, 0) + np.roll(blobs, 4, 1) + np.roll(blobs, (4, 4), (0, 1))) / 4
    fine = rng.random((height, width, 3), dtype=np.float32)
    img = 0.45 * base + 0.35 * blobs + 0.2 * fine
    return np.ascontiguousarray((img * 255).round().clip(0, 255).astype(np.uint8))


def clip_frames(width: int, height: int, frames: int, seed: int = 0) -> Iterator[np.ndarray]:
    """`frames` RGB frames of the texture panning diagonally (3 px right, 2 px down per frame)."""
    tex = texture(width, height, seed)
    for i in range(frames):
        yield np.ascontiguousarray(np.roll(tex, (2 * i, 3 * i), axis=(0, 1)))


def make_clip(path: str | os.PathLike, width: int, height: int, frames: int, seed: int = 0) -> Path:
    """Write the bench clip: a moving textured pattern, H.264 yuv420p at 25 fps."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(CLIP_OPTIONS)
        for rgb in clip_frames(width, height, frames, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def count_frames(path: str | os.PathLike) -> int:
    """Video frames in a file, counted by decoding (not from the header's estimate)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(main_video_stream(container)))
