"""Build streamsr/weights/calibration.safetensors: the INT8 calibration frames (see
streamsr/inference/backends/ov_int8.py).

12 low-resolution frames (128x80 RGB uint8) from scikit-image's bundled photographs that the
sample clips do not use (samples/sources.json lists them as training photographs): each photo
downscaled (antialiased bicubic) so its short side is 80-120 px, then a 128x80 crop. Real photo
content, like the video the model upscales, and none of the evaluation clips. Deterministic:
rerun it to get the same bytes (needs scikit-image: pip install 'streamsr[train]').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from skimage import data

OUT = Path(__file__).resolve().parents[1] / "streamsr" / "weights" / "calibration.safetensors"
# (photo, short side after downscaling, crop offset as a fraction of the free room)
PLAN = [("astronaut", 96, 0.5), ("astronaut", 120, 0.2), ("chelsea", 90, 0.5),
        ("camera", 100, 0.4), ("hubble_deep_field", 96, 0.3), ("immunohistochemistry", 100, 0.6),
        ("retina", 110, 0.5), ("brick", 90, 0.1), ("grass", 90, 0.7), ("gravel", 96, 0.4),
        ("coins", 100, 0.5), ("chelsea", 120, 0.8)]
W, H = 128, 80


def frame(name: str, short: int, at: float) -> np.ndarray:
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    h, w = t.shape[-2:]
    s = short / min(h, w)
    size = (max(H, round(h * s)), max(W, round(w * s)))
    t = F.interpolate(t, size=size, mode="bicubic", antialias=True, align_corners=False)
    y, x = round((size[0] - H) * at), round((size[1] - W) * at)
    out = t[0, :, y:y + H, x:x + W].clamp(0, 1).mul(255).round().byte()
    return out.permute(1, 2, 0).contiguous().numpy()


def main() -> None:
    frames = np.stack([frame(*p) for p in PLAN])
    save_file({"frames": frames}, str(OUT), metadata={
        "what": "streamsr INT8 calibration frames (scripts/make_calibration.py)",
        "photos": ",".join(p[0] for p in PLAN)})
    print(f"wrote {OUT}: {frames.shape}")


if __name__ == "__main__":
    main()
