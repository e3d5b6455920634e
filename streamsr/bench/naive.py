"""The naive per-frame loop: what a user writes first, the baseline the pipeline must beat."""

from __future__ import annotations

import time
from pathlib import Path

import av
import torch
from torch import nn

from streamsr.bench import encoding
from streamsr.bench.clip import CLIP_FPS
from streamsr.bench.timing import Timing, sync
from streamsr.video.encoder import EncodeOptions
from streamsr.video.ffmpeg import main_video_stream


def naive_loop(src: Path, dst: Path, model: nn.Module, device: torch.device,
               enc: EncodeOptions) -> Timing:
    """One frame at a time: PyAV decode, CPU conversion, batch 1 in fp32, copy back, encode;
    no overlap, no threads."""
    model = model.to(device).eval()
    with av.open(str(src)) as probe:
        vs = main_video_stream(probe)
        width, height, rate = vs.width, vs.height, vs.average_rate or CLIP_FPS
    with torch.inference_mode():  # warm-up: one call of the same shape, untimed
        model(torch.zeros(1, 3, height, width, device=device))
    sync(device)
    n = 0
    t0 = time.perf_counter()
    with torch.inference_mode(), av.open(str(src)) as inp:
        out, stream = encoding.open_encoder(dst, 4 * width, 4 * height, rate, enc)
        try:
            for frame in inp.decode(main_video_stream(inp)):
                hr = _upscale_frame(model, frame, device)
                frame = encoding.stamp(av.VideoFrame.from_ndarray(hr, format="rgb24"), n, rate)
                for packet in stream.encode(frame):
                    out.mux(packet)
                n += 1
            for packet in stream.encode(None):
                out.mux(packet)
        finally:
            out.close()
    seconds = max(time.perf_counter() - t0, 1e-9)
    return Timing(fps=n / seconds, frames=n, seconds=seconds)


def _upscale_frame(model: nn.Module, frame: av.VideoFrame, device: torch.device):
    """One decoded frame through the model: RGB uint8 in, RGB uint8 (H, W, 3) out."""
    rgb = frame.to_ndarray(format="rgb24")
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    y = model(x.to(device))
    y = y if isinstance(y, torch.Tensor) else y.hr
    return y[0].cpu().clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).numpy()
