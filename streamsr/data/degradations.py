"""Degradations: how a sharp photo becomes the blurry, noisy, compressed input the model sees.

Each degradation is a plain function `(image, rng, **settings) -> image`; a dataset binds the
settings (strengths from the recipe, the crop of this sample) and gets an `(image, rng) -> image`
callable. A recipe names the ones a run uses (`degradations = ["shake", "camera", "noise",
"codec"]`, all of them by default), looked up in the plain dict `DEGRADATIONS` below; a name
left out is off, as if its strength in the recipe were zero.

They run in a fixed order, each at the stage where it happens to a real picture
(`streamsr.data.shake_dataset.ShakeDataset` composes them):

- blur, on the HR photo: "shake" (one handheld exposure, `shake_blur`) or "camera" (one exposure
  of a simulated handheld or dashcam clip, `camera_blur`, for a `shake_camera_motion` fraction of
  the samples). A moving camera sees past the crop's edges, so a blur takes the whole photo (in
  linear light for "camera") and returns the blurred crop, in float code values;
- "noise": sensor noise on that float image, before it is rounded to 8 bits;
- "codec": on the LR input after the x4 bicubic down-scale, a 4:2:0 H.264 round trip at a random
  CRF, for a `shake_codec` fraction of the samples, as video reaches the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from streamsr.data.synthetic import add_noise, camera_blur, h264_roundtrip, shake_blur
from streamsr.errors import ConfigError

Degradation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def no_blur(image: np.ndarray, rng: np.random.Generator, *,
            at: tuple[int, int, int, int]) -> np.ndarray:
    """The crop `at` unblurred, as float code values (the blur stage when "shake" is left out)."""
    y, x, h, w = at
    return image[y:y + h, x:x + w].astype(np.float32)


def codec(image: np.ndarray, rng: np.random.Generator, *, fraction: float,
          crf: tuple[int, int]) -> np.ndarray:
    """uint8 RGB `image` through 4:2:0 H.264 at a CRF drawn in `crf`, for a `fraction` of calls.

    Odd-sized images are left alone (4:2:0 needs even sides).
    """
    if fraction <= 0:
        return image
    if rng.random() < fraction and image.shape[0] % 2 == 0 and image.shape[1] % 2 == 0:
        return h264_roundtrip(image, int(rng.integers(crf[0], crf[1] + 1)))
    return image


DEGRADATIONS: dict[str, Callable[..., np.ndarray]] = {
    "shake": shake_blur,
    "camera": camera_blur,
    "noise": add_noise,
    "codec": codec,
}

DEFAULT_DEGRADATIONS = ("shake", "camera", "noise", "codec")


def check_degradations(names: Sequence[str]) -> tuple[str, ...]:
    """The names, each one of `DEGRADATIONS` (a ConfigError names the known ones)."""
    unknown = [n for n in names if n not in DEGRADATIONS]
    if unknown:
        raise ConfigError(f"unknown degradation(s) {unknown}; known: {sorted(DEGRADATIONS)}")
    return tuple(names)


__all__ = ["DEFAULT_DEGRADATIONS", "DEGRADATIONS", "Degradation", "check_degradations", "codec",
           "no_blur"]
