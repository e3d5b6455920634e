"""Datasets: prepared triplets for training and validation, whole-image pairs for evaluation.

Augmentation draws from a generator seeded by (seed, epoch, index), never from global state, so
a sample is the same whichever worker, process or resumed run loads it. That is what lets a
resumed run and a multi-process run see exactly the data an uninterrupted single run sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from streamsr.data.gopro import IMAGE_EXTS, ImagePair, find_pairs, read_pair, read_rgb
from streamsr.data.triplets import KINDS, SETTINGS, CropSettings, read_index, read_settings
from streamsr.errors import ConfigError, InputError


def to_tensor(img: np.ndarray) -> Tensor:
    """uint8 RGB HWC -> float CHW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


def _prepared_settings(root: Path) -> CropSettings:
    """`read_settings`, with a pointer to the right command when `root` holds photos or pairs."""
    if root.is_dir() and not (root / SETTINGS).exists():
        if any(b.is_dir() and (b.parent / "sharp").is_dir() for b in root.rglob("blur")):
            raise InputError(f"{root} holds blurry/sharp image pairs, not triplets: make them "
                             f"with `streamsr prepare gopro --src {root} --dst DIR` and train on "
                             f"DIR")
        photos = next((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS), None)
        if photos is not None:
            raise InputError(f"{root} is a folder of images, not a `streamsr prepare` folder (no "
                             f"{SETTINGS}): the recipe's data = 'prepared' reads triplets; for "
                             f"sharp photos use a photos recipe (train/lite_synthetic.toml, or "
                             f"--set data=photos --set patch=48), or make triplets with "
                             f"`streamsr prepare synthetic --images {root} --dst DIR`")
    return read_settings(root)


class TripletDataset(Dataset):
    """[L_blur, L, H] triplets of one split of a prepared folder, as float CHW tensors in [0, 1].

    `patch` (LR pixels) takes a random aligned crop (H gets the matching x4 window); 0 keeps the
    stored size. `augment` adds a random horizontal flip and a rotation by a multiple of 90
    degrees, the same for all three images. `limit` keeps that many triplets, evenly spaced (for
    a quick validation set). Call `set_epoch` each epoch so crops differ between epochs.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", patch: int = 0,
                 augment: bool = False, seed: int = 0, limit: int = 0) -> None:
        self.root = Path(root)
        self.settings = _prepared_settings(self.root)
        self.scale = self.settings.scale
        self.names = [n for r in read_index(self.root) if r["split"] == split for n in r["triplets"]]
        if not self.names:
            raise InputError(f"{self.root} has no triplets in the {split!r} split")
        if limit and limit < len(self.names):
            step = len(self.names) / limit
            self.names = [self.names[int(i * step)] for i in range(limit)]
        lr_size = self.settings.patch // self.scale
        if patch > lr_size:
            raise ConfigError(f"patch {patch} is larger than the prepared LR triplets ({lr_size} px)")
        self.split, self.patch, self.augment, self.seed = split, patch, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Pick this epoch's crops and augmentations (deterministic per epoch and index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        name = self.names[i]
        lr_blur, lr, hr = (read_rgb(self.root / self.split / k / f"{name}.png") for k in KINDS)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.patch and self.patch < lr.shape[0]:
            p, s = self.patch, self.scale
            y = int(rng.integers(0, lr.shape[0] - p + 1))
            x = int(rng.integers(0, lr.shape[1] - p + 1))
            lr_blur, lr = lr_blur[y:y + p, x:x + p], lr[y:y + p, x:x + p]
            hr = hr[s * y:s * (y + p), s * x:s * (x + p)]
        if self.augment:
            flip, rot = bool(rng.integers(0, 2)), int(rng.integers(0, 4))
            out = []
            for img in (lr_blur, lr, hr):
                if flip:
                    img = img[:, ::-1]
                out.append(np.rot90(img, rot))
            lr_blur, lr, hr = out
        return to_tensor(lr_blur), to_tensor(lr), to_tensor(hr)


class PairFolder(Dataset):
    """Whole blurry/sharp HR images for evaluation: a GOPRO_Large tree (its `test` split when it
    has one), one split or sequence of it, or any folder with `blur/` and `sharp/` (for example
    `DST/pairs/test` from `streamsr prepare frames`). Items: (blurry uint8 HWC, sharp, key)."""

    def __init__(self, root: str | os.PathLike, limit: int = 0) -> None:
        root = Path(root)
        split = "test" if (root / "test").is_dir() and not (root / "blur").is_dir() else None
        self.pairs: list[ImagePair] = find_pairs(root, split)
        if limit:
            self.pairs = self.pairs[:limit]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        blur, sharp = read_pair(self.pairs[i])
        return blur, sharp, self.pairs[i].key


__all__ = ["PairFolder", "TripletDataset", "to_tensor"]
