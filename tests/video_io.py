"""Helpers the video test files share: decode with the source, write through the sink."""

from __future__ import annotations

import socket
import time

import av
import media
import numpy as np
import torch

from streamsr.models.ops import bicubic_uint8
from streamsr.video.encoder import EncodeOptions
from streamsr.video.sink import open_sink
from streamsr.video.source import open_source

FAST = EncodeOptions(preset="ultrafast")


def decode_with_source(path) -> list:
    with open_source(path) as src:
        return list(src)


def stream_pts(path) -> list[int]:
    """Presentation timestamps straight from PyAV, for comparison with the source."""
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def copy_through_sink(src, dst, *, scale: int = 4, **kw):
    """Decode `src`, upscale bicubically (nearest for flat colour tests), write `dst`."""
    with open_source(src) as s:
        with open_sink(dst, s.info, scale=scale, copy_from=str(src), **kw) as sink:
            for f in s:
                h, w = f.rgb.shape[:2]
                sink.write(bicubic_uint8(f.rgb, (h * scale, w * scale)), f.pts, f.time_base, name=f.name)
    return sink


def plane_samples(plane) -> np.ndarray:
    """One 8-bit plane's samples without the line padding."""
    rows = np.frombuffer(bytes(plane), np.uint8).reshape(-1, plane.line_size)
    return rows[:plane.height, :plane.width]


class Counting(media.BicubicX4):
    """Bicubic x4 that counts the frames it is given (the engine's sizing runs included)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 5.0) -> None:
    """Wait until something listens on `port` (our own bind starts failing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


PUSH_LISTENER = """
import av, json, sys
url = sys.argv[1]
opts = ({"rtsp_flags": "listen", "listen_timeout": "10", "rtsp_transport": "tcp"}
        if url.startswith("rtsp") else {"listen": "1", "timeout": "10"})
c = av.open(url, options=opts, timeout=(15, 5))
got = []
try:
    for f in c.decode(video=0):
        got.append((f.width, f.height, f.to_ndarray(format="rgb24").reshape(-1, 3).mean(0).tolist(),
                    float(f.time) if f.time is not None else None))
except av.error.OSError:  # rtmp: the pusher hanging up reads as an I/O error
    pass
c.close()
json.dump(got, open(sys.argv[2], "w"))
"""
