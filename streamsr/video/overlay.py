"""The --side-by-side view: bicubic on the left, the model on the right, each half labelled."""

from __future__ import annotations

import numpy as np
import torch

from streamsr.models.ops import resize_bicubic


def _label(img: np.ndarray, text: str, x: int) -> None:
    """Small white text with a dark outline at the top of `img` (in place; uint8 or uint16)."""
    import cv2

    h = img.shape[0]
    scale = max(0.35, min(1.2, h / 720))
    thick = 1 if scale < 0.8 else 2
    y = int(8 + 22 * scale)
    font = cv2.FONT_HERSHEY_SIMPLEX
    if img.dtype == np.uint8:
        cv2.putText(img, text, (x, y), font, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(img, text, (x, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
        return
    # OpenCV draws text into 8-bit images only: draw the coverage of the outline and of the
    # text into 8-bit masks, then blend them in as putText blends colours (dst += (c - dst) * a)
    _, base = cv2.getTextSize(text, font, scale, thick + 2)
    band = img[:min(img.shape[0], y + base + thick + 2)]
    outline, core = np.zeros(band.shape[:2], np.uint8), np.zeros(band.shape[:2], np.uint8)
    cv2.putText(outline, text, (x, y), font, scale, 255, thick + 2, cv2.LINE_AA)
    cv2.putText(core, text, (x, y), font, scale, 255, thick, cv2.LINE_AA)
    a, c = outline[..., None] / 255.0, core[..., None] / 255.0
    band[:] = np.round(band * (1 - a) * (1 - c) + np.iinfo(img.dtype).max * c).astype(img.dtype)


def side_by_side(lr: np.ndarray, sr: np.ndarray, labels: tuple[str, str] = ("bicubic", "streamsr")) -> np.ndarray:
    """(N,H,W,3) input + (N,sH,sW,3) model output -> left half bicubic, right half model, labelled.

    uint8 or uint16 frames (both of one dtype); the result has that dtype.
    """
    n, sh, sw = sr.shape[:3]
    peak = int(np.iinfo(sr.dtype).max)
    x = torch.from_numpy(np.ascontiguousarray(lr)).permute(0, 3, 1, 2).float()
    bic = resize_bicubic(x, (sh, sw)).round_().clamp_(0, peak)
    bic = bic.to(torch.uint16 if peak > 255 else torch.uint8).permute(0, 2, 3, 1).numpy()
    half = sw // 2
    out = np.ascontiguousarray(sr.copy())
    out[:, :, :half] = bic[:, :, :half]
    if half > 0:
        out[:, :, half:half + 1] = peak  # thin divider
    if sh >= 24 and sw >= 96:
        for img in out:
            _label(img, labels[0], 4)
            _label(img, labels[1], half + 4)
    return out
