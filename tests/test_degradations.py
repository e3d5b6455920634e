"""Degradations named in the recipe: plain (image, rng) -> image functions, composed by ShakeDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamsr.data.dataset import to_tensor
from streamsr.data.degradations import DEFAULT_DEGRADATIONS, DEGRADATIONS, codec, no_blur
from streamsr.data.shake_dataset import ShakeDataset
from streamsr.data.synthetic import add_noise, camera_pair, h264_roundtrip, synthetic_pair
from streamsr.errors import ConfigError
from streamsr.models.ops import bicubic_uint8
from streamsr.training.recipe import Recipe, apply_overrides, load_recipe


def _sample_as_before(ds: ShakeDataset, i: int, max_shift: float, crf: tuple[int, int],
                      codec_fraction: float):
    """ShakeDataset.__getitem__ as it was written before degradations.py (the pair functions
    of streamsr.data.synthetic called in one block): the reference for the same-seed check."""
    rng = np.random.default_rng([ds.seed, ds.epoch, i, 1 if ds.split == "train" else 2])
    k = int(rng.integers(len(ds.images)))
    hr_size = ds.patch * ds.scale
    noise = float(rng.uniform(0, ds.max_noise)) if ds.max_noise > 0 else 0.0
    if ds.camera_motion > 0 and rng.random() < ds.camera_motion:
        blurry, sharp = camera_pair(ds.images[k], ds.linear[k], rng, size=hr_size, noise_sigma=noise)
    else:
        blurry, sharp = synthetic_pair(ds.images[k], rng, size=hr_size, noise_sigma=noise,
                                       max_shift=max_shift, max_angle=0.6, exposures=13)
    if ds.augment:
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        blurry, sharp = (np.rot90(a[:, ::-1] if flip else a, k) for a in (blurry, sharp))
    lr_size = (ds.patch, ds.patch)
    lr_blur = bicubic_uint8(blurry, lr_size)
    if codec_fraction > 0 and rng.random() < codec_fraction and ds.patch % 2 == 0:
        lr_blur = h264_roundtrip(lr_blur, int(rng.integers(crf[0], crf[1] + 1)))
    return to_tensor(lr_blur), to_tensor(bicubic_uint8(sharp, lr_size)), to_tensor(sharp)


def test_a_fixed_seed_gives_the_samples_of_before_bit_for_bit(photos):
    kw = dict(patch=16, length=10, seed=5, val_fraction=0.34, max_shift=20.0, max_noise=2.0,
              camera_motion=0.5, codec=0.5, crf=(8, 26))
    ds = ShakeDataset(photos, **kw)
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            got, want = ds[i], _sample_as_before(ds, i, 20.0, (8, 26), 0.5)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), (epoch, i)


def test_a_degradation_left_out_is_off_as_if_its_strength_were_zero(photos):
    kw = dict(patch=16, length=6, seed=2, val_fraction=0.34, augment=False, crf=(20, 20))
    full = dict(max_noise=3.0, camera_motion=0.5, codec=1.0)
    pairs = [("codec", dict(codec=0.0)), ("noise", dict(max_noise=0.0)),
             ("camera", dict(camera_motion=0.0))]
    for name, zero in pairs:
        names = [n for n in DEFAULT_DEGRADATIONS if n != name]
        left_out = ShakeDataset(photos, degradations=names, **kw, **full)
        zeroed = ShakeDataset(photos, **kw, **{**full, **zero})
        for i in range(len(left_out)):
            assert all(torch.equal(a, b) for a, b in zip(left_out[i], zeroed[i], strict=True)), name


def test_without_shake_the_input_is_the_unblurred_crop(photos):
    ds = ShakeDataset(photos, patch=16, length=4, seed=1, val_fraction=0.34, augment=False,
                      degradations=())
    for i in range(len(ds)):
        lr_blur, lr, _ = ds[i]
        assert torch.equal(lr_blur, lr)


def test_degradations_are_plain_functions_of_image_and_rng():
    assert set(DEGRADATIONS) == set(DEFAULT_DEGRADATIONS) == {"shake", "camera", "noise", "codec"}
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    f = img.astype(np.float32)
    assert add_noise(f, np.random.default_rng(0), sigma=0.0) is f
    a = add_noise(f, np.random.default_rng(1), sigma=2.0)
    assert np.array_equal(a, add_noise(f, np.random.default_rng(1), sigma=2.0)) and not np.array_equal(a, f)
    assert codec(img, np.random.default_rng(0), fraction=0.0, crf=(20, 20)) is img
    odd = img[:31]  # 4:2:0 needs even sides: left alone
    assert codec(odd, np.random.default_rng(0), fraction=1.0, crf=(20, 20)) is odd
    out = codec(img, np.random.default_rng(0), fraction=1.0, crf=(20, 20))
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    crop = no_blur(img, np.random.default_rng(0), at=(2, 3, 8, 10))
    assert crop.dtype == np.float32 and np.array_equal(crop, img[2:10, 3:13])
    blurred = DEGRADATIONS["shake"](img, np.random.default_rng(0), at=(8, 8, 16, 16), max_shift=6.0)
    assert blurred.shape == (16, 16, 3) and blurred.dtype == np.float32


def test_the_recipe_names_degradations_and_old_recipes_get_them_all(tmp_path):
    assert Recipe().degradations == DEFAULT_DEGRADATIONS
    assert load_recipe("train/lite_long.toml").degradations == DEFAULT_DEGRADATIONS
    r = apply_overrides(Recipe(), ["degradations=shake,codec"])
    assert r.degradations == ("shake", "codec")
    assert apply_overrides(Recipe(), ['degradations=["noise"]']).degradations == ("noise",)
    path = tmp_path / "r.toml"
    path.write_text(r.to_toml())
    assert load_recipe(path).degradations == ("shake", "codec")
    with pytest.raises(ConfigError, match=r"unknown degradation\(s\) \['blur'\]"):
        apply_overrides(Recipe(), ["degradations=blur"])
    with pytest.raises(ConfigError, match="not a valid list of names"):
        apply_overrides(Recipe(), ["degradations=3"])
