"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import media
import pytest
import torch

from streamsr.models import TINY, DeblurSR
from streamsr.models.weights import save_model


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A `tiny`-config weights file (seed 0), for runs that load a model by path."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_model(DeblurSR(TINY), path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Four 32x24 frames that carry their index (media.index_frame): the fault cases' input."""
    return media.make_index_clip(tmp_path_factory.mktemp("clip") / "in.mp4", n=4, size=(media.W, media.H))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three real photographs (scikit-image, public domain) as a photo folder for ShakeDataset."""
    import cv2
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        cv2.imwrite(str(d / f"{i}_{name}.png"), getattr(data, name)()[:, :, ::-1])
    return d
