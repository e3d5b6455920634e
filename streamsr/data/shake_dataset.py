"""Training triplets made on the fly from sharp photographs with random camera shake.

`streamsr prepare synthetic` writes a fixed set of triplets to disk; this dataset instead draws a
fresh shake blur, crop, noise level and orientation for every sample, so a small photo
collection gives unlimited distinct training pairs and nothing has to be stored or shipped (the
default `lite` weights are trained this way, see train/lite_synthetic.toml). Each sample is a
pure function of (seed, epoch, index), like `TripletDataset`, so resumed and multi-process runs
see the same data as an uninterrupted single run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from streamsr.data.dataset import to_tensor
from streamsr.data.degradations import (
    DEFAULT_DEGRADATIONS,
    DEGRADATIONS,
    check_degradations,
    no_blur,
)
from streamsr.data.gopro import read_rgb
from streamsr.data.prepare import held_out, still_images
from streamsr.data.synthetic import quantise, random_crop
from streamsr.data.transforms import srgb_to_linear
from streamsr.data.triplets import INDEX, SETTINGS
from streamsr.errors import ConfigError, InputError
from streamsr.models.ops import bicubic_uint8


def _refuse_non_photo_folder(root: Path) -> None:
    """A `streamsr prepare` folder or a blurry/sharp pair tree is not a folder of sharp photos:
    shaking its (already small or blurry) images would train on the wrong data and still look
    like a good run."""
    for marker in (SETTINGS, INDEX):
        if (root / marker).is_file():
            raise ConfigError(f"{root} is a `streamsr prepare` folder (it has {marker}), not a "
                              f"folder of sharp photos as the recipe's data = 'photos' reads; train "
                              f"on it with --set data=prepared, or point --data at your photos")
    if root.is_dir():
        for blur in root.rglob("blur"):
            if blur.is_dir() and (blur.parent / "sharp").is_dir():
                raise ConfigError(f"{root} holds blurry/sharp image pairs ({blur.parent}/blur, "
                                  f"sharp), not only sharp photos; make triplets with `streamsr "
                                  f"prepare gopro --src {root} --dst DIR` and train on DIR with "
                                  f"data = 'prepared'")


class ShakeDataset(Dataset):
    """[L_blur, L, H] float CHW triplets: `patch` LR pixels square, x`scale` for H.

    Photos are split into train/test by `held_out` (whole photos, as `prepare synthetic` does).
    Photos smaller than one HR crop are skipped. `length` is the number of samples per epoch.
    Each sample is a random crop of a random photo through the `degradations` named (see
    streamsr.data.degradations): a shake blur of up to `max_shift` pixels, or for a
    `camera_motion` fraction of the samples one exposure of a simulated handheld or dashcam
    clip; Gaussian noise of a sigma drawn in [0, `max_noise`]; and for a `codec` fraction of the
    LR inputs a 4:2:0 H.264 round trip at a CRF drawn in `crf`, as video does.
    """

    def __init__(self, images: str | os.PathLike, split: str = "train", patch: int = 48,
                 length: int = 4096, seed: int = 0, scale: int = 4, val_fraction: float = 0.1,
                 max_shift: float = 24.0, max_angle: float = 0.6, exposures: int = 13,
                 max_noise: float = 2.0, augment: bool = True, camera_motion: float = 0.0,
                 codec: float = 0.0, crf: tuple[int, int] = (10, 28),
                 degradations: Sequence[str] = DEFAULT_DEGRADATIONS) -> None:
        on = set(check_degradations(degradations))
        _refuse_non_photo_folder(Path(images))
        files = still_images(Path(images))
        hr = patch * scale
        self.images = []
        for i, f in enumerate(files):
            if held_out(i, len(files), val_fraction) != (split == "test"):
                continue
            img = read_rgb(f)
            if min(img.shape[:2]) >= hr:
                self.images.append(img)
        if not self.images:
            raise InputError(f"no {split!r} photos of at least {hr}x{hr} pixels in {images}")
        self.split, self.patch, self.scale, self.length = split, patch, scale, length
        self.seed, self.augment = seed, augment
        # a degradation left out is off, as if its strength were zero
        self.max_noise = max_noise if "noise" in on else 0.0
        self.camera_motion = camera_motion if "camera" in on else 0.0
        self.shake = (partial(DEGRADATIONS["shake"], max_shift=max_shift, max_angle=max_angle,
                              exposures=exposures) if "shake" in on else no_blur)
        self.camera = DEGRADATIONS["camera"]
        self.noise = DEGRADATIONS["noise"]
        self.codec = partial(DEGRADATIONS["codec"], fraction=codec if "codec" in on else 0.0,
                             crf=(int(crf[0]), int(crf[1])))
        self.linear = ([srgb_to_linear(img.astype(np.float32) / 255.0).astype(np.float32)
                        for img in self.images] if self.camera_motion > 0 else [])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of samples (validation keeps epoch 0: the same set every time)."""
        self.epoch = epoch if self.split == "train" else 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """Sample `i` of this epoch: a pure function of (seed, epoch, i, split).

        The draws come in a fixed order (photo, noise level, blur kind, crop, then each
        degradation's own), so a given seed gives the same samples release after release.
        """
        rng = np.random.default_rng([self.seed, self.epoch, i, 1 if self.split == "train" else 2])
        k = int(rng.integers(len(self.images)))
        size = self.patch * self.scale
        sigma = float(rng.uniform(0, self.max_noise)) if self.max_noise > 0 else 0.0
        if self.camera_motion > 0 and rng.random() < self.camera_motion:
            blur, scene = self.camera, self.linear[k]
        else:
            blur, scene = self.shake, self.images[k]
        at = random_crop(rng, scene.shape, size, size)
        blurry = quantise(self.noise(blur(scene, rng, at=at), rng, sigma=sigma))
        y, x = at[:2]
        sharp = np.ascontiguousarray(self.images[k][y:y + size, x:x + size])
        if self.augment:
            turns, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            blurry, sharp = (np.rot90(a[:, ::-1] if flip else a, turns) for a in (blurry, sharp))
        lr_size = (self.patch, self.patch)
        lr_blur = self.codec(bicubic_uint8(blurry, lr_size), rng)
        return (to_tensor(lr_blur), to_tensor(bicubic_uint8(sharp, lr_size)), to_tensor(sharp))


__all__ = ["ShakeDataset"]
