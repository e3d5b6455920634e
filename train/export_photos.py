"""Write the photographs the default `lite` weights are trained on into a folder (PNG).

They are scikit-image's bundled real photographs (public domain / CC0, see samples/README.md)
minus the ones the bundled samples are made from, so the samples measure the default model on
scenes it never saw. Run: `python train/export_photos.py DST`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

# skimage.data names. Excluded: the sample photos (rocket, coffee), `clock` (already motion
# blurred) and drawings/synthetic images (logo, colorwheel, horse, chessboard, phantoms).
TRAINING_PHOTOS = (
    "astronaut", "chelsea", "camera", "hubble_deep_field", "immunohistochemistry", "retina",
    "brick", "grass", "gravel", "moon", "coins", "cell", "page", "text",
)


INSTALL_HINT = ("train/export_photos.py needs scikit-image, which the `train` extra installs: "
                "pip install -e '.[train]' in a checkout (pip install 'streamsr[train]' otherwise)")


def training_images() -> dict[str, np.ndarray]:
    """name -> RGB uint8 image; the stereo motorcycle pair counts as two photographs."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit(f"export_photos: error: {INSTALL_HINT}") from None

    out = {name: getattr(data, name)() for name in TRAINING_PHOTOS}
    left, right, _ = data.stereo_motorcycle()
    out["motorcycle_left"], out["motorcycle_right"] = left, right
    rgb = {}
    for name, img in out.items():
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = (np.clip(img.astype(np.float64) / img.max(), 0, 1) * 255).round().astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        rgb[name] = np.ascontiguousarray(img[..., :3])
    return rgb


def export(dst: str | Path) -> list[Path]:
    images = training_images()  # first: a missing scikit-image leaves no empty folder
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in sorted(images.items()):
        path = dst / f"{name}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python train/export_photos.py DST")
    for p in export(sys.argv[1]):
        print(p)
