"""Finding and reading blurry/sharp image pairs: the GOPRO_Large layout and plain pair folders.

GOPRO_Large (Nah et al. 2017) is laid out as `<split>/<sequence>/{blur,blur_gamma,sharp}/*.png`
with `split` in {train, test}. `blur` holds the frames averaged in linear light; that is the set
the paper (and MPRNet) train and test on, so `blur_gamma` is ignored. The same reader accepts a
single split folder, a single sequence, or any folder with `blur/` and `sharp/` sub-folders whose
file names match (what `streamsr prepare frames|synthetic` writes under `pairs/`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamsr.errors import InputError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImagePair:
    """One blurry frame and its sharp ground truth; `key` is unique within a dataset."""

    blur: Path
    sharp: Path
    split: str  # "train", "test", or "" for a folder without splits
    sequence: str  # GOPRO sequence name, or "" for a flat pair folder

    @property
    def key(self) -> str:
        """A file-name-safe identifier: `<sequence>_<frame stem>` (the stem alone when flat)."""
        stem = self.blur.stem
        return f"{self.sequence}_{stem}" if self.sequence else stem


def _images(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS}


def _pairs_in(seq_dir: Path, split: str, sequence: str) -> list[ImagePair]:
    """The pairs of one folder that has `blur/` and `sharp/` inside."""
    blur, sharp = _images(seq_dir / "blur"), _images(seq_dir / "sharp")
    missing = sorted(set(blur) ^ set(sharp))
    if missing:
        raise InputError(f"{seq_dir}: blur/ and sharp/ do not hold the same file names "
                         f"({len(missing)} unmatched, first: {missing[0]})")
    return [ImagePair(blur[n], sharp[n], split, sequence) for n in sorted(blur)]


def _is_pair_dir(p: Path) -> bool:
    return (p / "blur").is_dir() and (p / "sharp").is_dir()


def _sequences(split_dir: Path, split: str) -> list[ImagePair]:
    pairs: list[ImagePair] = []
    for seq in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if _is_pair_dir(seq):
            pairs += _pairs_in(seq, split, seq.name)
        else:
            log.debug("skipping %s: no blur/ and sharp/ inside", seq)
    return pairs


def find_pairs(root: str | os.PathLike, split: str | None = None) -> list[ImagePair]:
    """Every blurry/sharp pair under `root`, sorted; `split` limits a GOPRO_Large root to one split.

    `root` may be GOPRO_Large itself, one of its split folders, one sequence folder, or any folder
    with `blur/` and `sharp/` inside (for example the `pairs/` folder `prepare frames` writes).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"no such data folder: {root}")
    if _is_pair_dir(root):
        pairs = _pairs_in(root, "", "")
    elif any((root / s).is_dir() for s in SPLITS):
        splits = [split] if split else [s for s in SPLITS if (root / s).is_dir()]
        if split and not (root / split).is_dir():
            raise InputError(f"{root} has no {split}/ folder")
        pairs = [p for s in splits for p in _sequences(root / s, s)]
    else:
        name = root.name if root.name in SPLITS else ""
        pairs = _sequences(root, name)
    if not pairs:
        raise InputError(f"no blurry/sharp image pairs under {root} (expected the GOPRO_Large "
                         f"layout <split>/<sequence>/{{blur,sharp}}/*.png or blur/ + sharp/ folders)")
    keys = [p.key for p in pairs]
    if len(set(keys)) != len(keys):
        raise InputError(f"{root}: two pairs share a name; keep one split or sequence per run")
    return pairs


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB HWC (16-bit files are scaled down, alpha dropped)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"cannot read image {path}")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def write_rgb(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write uint8 RGB HWC losslessly (PNG), atomically, so an interrupted run leaves no half file."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    if not cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise InputError(f"cannot write image {path}")
    os.replace(tmp, path)


def read_pair(pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
    """The (blurry, sharp) uint8 RGB images of a pair; their sizes must agree."""
    blur, sharp = read_rgb(pair.blur), read_rgb(pair.sharp)
    if blur.shape != sharp.shape:
        raise InputError(f"{pair.blur.name}: blurry {blur.shape[1]}x{blur.shape[0]} and sharp "
                         f"{sharp.shape[1]}x{sharp.shape[0]} sizes differ")
    return blur, sharp


__all__ = ["ImagePair", "find_pairs", "read_pair", "read_rgb", "write_rgb"]
