"""On-the-fly camera-shake triplets (the default weights' training data)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from streamsr.data.shake_dataset import ShakeDataset
from streamsr.errors import InputError
from streamsr.metrics import psnr
from streamsr.models.ops import bicubic_uint8


def test_triplet_geometry_and_determinism(photos):
    ds = ShakeDataset(photos, patch=16, length=5, seed=3, val_fraction=0.34)
    a = ds[2]
    assert [t.shape for t in a] == [(3, 16, 16), (3, 16, 16), (3, 64, 64)]
    b = ds[2]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False))
    ds.set_epoch(1)
    assert not torch.equal(ds[2][2], a[2])  # a new epoch draws new samples


def test_lr_is_the_project_bicubic_of_hr(photos):
    ds = ShakeDataset(photos, patch=16, length=3, seed=0, augment=False)
    _, lr, hr = ds[0]
    hr8 = (hr * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    expect = torch.from_numpy(bicubic_uint8(hr8, (16, 16))).permute(2, 0, 1).float() / 255
    assert torch.equal(lr, expect)


def test_blurry_input_differs_from_sharp_and_is_blurrier(photos):
    ds = ShakeDataset(photos, patch=32, length=16, seed=1, max_noise=0.0, augment=False)
    lap = lambda t: cv2.Laplacian(t.permute(1, 2, 0).numpy(), cv2.CV_32F).var()  # noqa: E731
    sharper = 0
    for i in range(len(ds)):
        lr_blur, lr, _ = ds[i]
        sharper += lap(lr) > lap(lr_blur)
    assert sharper >= 12  # nearly every sample: blur removes high frequencies
    assert psnr(ds[0][0][None], ds[0][1][None]).item() < 60


def test_split_is_by_whole_photo(photos):
    train = ShakeDataset(photos, "train", patch=16, val_fraction=0.34)
    test = ShakeDataset(photos, "test", patch=16, val_fraction=0.34)
    assert len(train.images) == 2 and len(test.images) == 1
    assert not any(np.array_equal(test.images[0], im) for im in train.images)


def test_no_usable_photos_is_a_clear_error(tmp_path):
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(InputError, match="no 'train' photos"):
        ShakeDataset(tmp_path, patch=16, val_fraction=0.0)


def test_video_degradations_are_deterministic_and_change_only_the_input(photos):
    kw = dict(patch=16, length=4, seed=5, augment=False, max_noise=0.0, camera_motion=1.0)
    clean = ShakeDataset(photos, **kw)
    video = ShakeDataset(photos, codec=1.0, crf=(24, 24), **kw)
    a, b = video[1], video[1]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert [t.shape for t in a] == [(3, 16, 16), (3, 16, 16), (3, 64, 64)]
    # the L and H targets are still the project's bicubic pair of a photo crop
    hr8 = (a[2] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert torch.equal(a[1], torch.from_numpy(bicubic_uint8(hr8, (16, 16))).permute(2, 0, 1).float() / 255)
    quality = []
    for i in range(4):
        c, v = clean[i], video[i]
        assert torch.equal(c[1], v[1]) and torch.equal(c[2], v[2])  # same blur draw, same targets
        quality.append(float(psnr(v[0], c[0])))
    # only the input went through 4:2:0 H.264: changed (flat dark crops barely), same picture
    assert min(quality) > 22 and min(quality) < 45, quality


