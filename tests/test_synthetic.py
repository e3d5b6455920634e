"""Synthetic camera-shake blur: determinism, identity at rest, blur strength, alignment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from streamsr.data.synthetic import camera_path, render_exposure, shake_trajectory, synthetic_pair
from streamsr.data.transforms import linear_to_srgb, srgb_to_linear


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real colour photograph (CC0), cropped to keep the tests quick."""
    return np.ascontiguousarray(data.astronaut()[40:296, 120:376])


def _blur(img: np.ndarray, poses: np.ndarray) -> np.ndarray:
    lin = srgb_to_linear(img.astype(np.float32) / 255.0)
    return np.clip(np.rint(linear_to_srgb(render_exposure(lin, poses)) * 255), 0, 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def _lap_var(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_shake_trajectory_shape_length_and_centre():
    rng = np.random.default_rng(3)
    p = shake_trajectory(rng, 15, 12.0, max_angle=0.8)
    assert p.shape == (15, 3)
    assert np.all(p[7] == 0)  # centred on the middle pose
    steps = np.hypot(*np.diff(p[:, :2], axis=0).T)
    assert steps.sum() == pytest.approx(12.0, rel=1e-9)  # path length is max_shift
    assert np.ptp(p[:, 2]) == pytest.approx(0.8, rel=1e-9)
    assert np.all(steps > 0)  # it keeps moving, sub-pixel steps
    assert steps.max() < 12.0 / 2


def test_deterministic_for_a_seed(photo):
    a = synthetic_pair(photo, np.random.default_rng(7), size=(96, 128), max_shift=16)
    b = synthetic_pair(photo, np.random.default_rng(7), size=(96, 128), max_shift=16)
    c = synthetic_pair(photo, np.random.default_rng(8), size=(96, 128), max_shift=16)
    assert a[0].shape == (96, 128, 3) and a[1].shape == (96, 128, 3)
    assert a[0].dtype == np.uint8
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # the sharp image is an exact crop of the photo
    ys, xs = np.nonzero(np.all(photo == a[1][0, 0], axis=2))
    assert any(np.array_equal(photo[y:y + 96, x:x + 128], a[1]) for y, x in zip(ys, xs, strict=True))


def test_zero_motion_returns_input(photo):
    still = shake_trajectory(np.random.default_rng(0), 9, 0.0, max_angle=0.0)
    out = _blur(photo, still)
    assert np.abs(out.astype(int) - photo).max() <= 1
    blurry, sharp = synthetic_pair(photo, np.random.default_rng(0), max_shift=0.0, max_angle=0.0,
                                   exposures=9)
    assert np.abs(blurry.astype(int) - sharp).max() <= 1


def test_blur_grows_with_shift(photo):
    energy = []
    for shift in [0, 3, 6, 12, 24]:
        p = shake_trajectory(np.random.default_rng(11), 13, shift, max_angle=0.0)
        energy.append(_lap_var(_blur(photo, p)))
    for prev, cur in zip(energy, energy[1:], strict=False):
        assert cur < prev * 1.02, energy
    assert energy[-1] < 0.25 * energy[0], energy


def test_blurry_and_sharp_stay_aligned(photo):
    aligned, shifted = [], []
    for seed in range(4):
        blurry, sharp = synthetic_pair(photo, np.random.default_rng(seed), size=(160, 160),
                                       max_shift=10)
        aligned.append(_psnr(blurry[8:-8, 8:-8], sharp[8:-8, 8:-8]))
        moved = np.roll(sharp, (3, -3), axis=(0, 1))
        shifted.append(_psnr(blurry[8:-8, 8:-8], moved[8:-8, 8:-8]))
    assert np.mean(aligned) > np.mean(shifted) + 2.0, (aligned, shifted)
    assert all(a > s for a, s in zip(aligned, shifted, strict=True))


def test_noise_and_jpeg_change_only_the_blurry_image(photo):
    kw = dict(size=(64, 64), max_shift=6)
    clean = synthetic_pair(photo, np.random.default_rng(5), **kw)
    noisy = synthetic_pair(photo, np.random.default_rng(5), noise_sigma=5.0, **kw)
    jpeg = synthetic_pair(photo, np.random.default_rng(5), jpeg_quality=30, **kw)
    np.testing.assert_array_equal(clean[1], noisy[1])
    np.testing.assert_array_equal(clean[1], jpeg[1])
    resid = noisy[0].astype(float) - clean[0]
    assert 3.5 < resid.std() < 6.5
    assert 25 < _psnr(jpeg[0], clean[0]) < 45


def test_grey_input_and_bad_crop():
    grey = data.camera()[:100, :120]
    blurry, sharp = synthetic_pair(grey, np.random.default_rng(1), size=64)
    assert blurry.shape == sharp.shape == (64, 64, 3)
    assert np.array_equal(sharp[..., 0], sharp[..., 2])
    with pytest.raises(ValueError):
        synthetic_pair(grey, np.random.default_rng(1), size=(101, 64))


@pytest.mark.parametrize("kind", ["handheld", "dashcam"])
def test_camera_path_is_smooth_and_deterministic(kind):
    p = camera_path(np.random.default_rng(2), 24, 12, kind, fps=12.0)
    q = camera_path(np.random.default_rng(2), 24, 12, kind, fps=12.0)
    assert p.shape == (24 * 12, 4)
    np.testing.assert_array_equal(p, q)
    step = np.abs(np.diff(p[:, :2], axis=0)).max()
    assert 0 < step < 2.0  # sub-pixel to ~1 px per substep: smooth at the high rate
    if kind == "dashcam":
        assert p[0, 3] == pytest.approx(1.0) and p[-1, 3] == pytest.approx(1.15)
        assert np.all(np.diff(p[:, 3]) >= 0)  # driving forward: the zoom only grows
        assert p[-1, 0] - p[0, 0] > 20  # it pans
    else:
        assert np.all(p[:, 3] == 1.0)
    with pytest.raises(ValueError):
        camera_path(np.random.default_rng(2), 4, 4, "drone")


def test_about_point_keeps_the_optical_centre_fixed():
    from streamsr.data.synthetic import about_point, pose_matrix
    rng = np.random.default_rng(4)
    poses = np.zeros((6, 4))
    poses[:, 2] = rng.uniform(-3, 3, 6)  # roll, degrees
    poses[:, 3] = rng.uniform(0.8, 1.4, 6)  # zoom
    look, out = (300.0, 200.0), (192, 192)
    oc = np.array([(out[1] - 1) / 2, (out[0] - 1) / 2])
    o = np.array([-150.0, 90.0])
    for pose in about_point(poses, tuple(o)):
        m = pose_matrix(pose, look, out)
        np.testing.assert_allclose(m @ np.array([look[0] + o[0], look[1] + o[1], 1.0]), oc + o, atol=1e-9)
    # without the correction the same point moves (by up to ~60 px here)
    m = pose_matrix(poses[np.argmax(np.abs(poses[:, 3] - 1))], look, out)
    assert np.abs(m @ np.array([look[0] + o[0], look[1] + o[1], 1.0]) - (oc + o)).max() > 10


def test_random_camera_exposure_is_centred_and_covers_both_kinds():
    from streamsr.data.synthetic import random_camera_exposure
    zooms = []
    for seed in range(20):
        p = random_camera_exposure(np.random.default_rng(seed))
        assert p.shape == (11, 4)
        np.testing.assert_allclose(p[5], [0, 0, 0, 1], atol=1e-12)  # sharp frame = middle pose
        zooms.append(np.ptp(p[:, 3]))
    assert min(zooms) == 0 and max(zooms) > 0  # handheld (no zoom) and dashcam (approach) clips


def test_camera_pair_sharp_is_the_crop_and_blurry_is_aligned(photo):
    from streamsr.data.synthetic import camera_pair
    lin = srgb_to_linear(photo.astype(np.float32) / 255.0).astype(np.float32)
    aligned, shifted = [], []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        blurry, sharp = camera_pair(photo, lin, rng, size=128)
        assert blurry.shape == sharp.shape == (128, 128, 3) and blurry.dtype == np.uint8
        # the sharp image is one of the photo's own 128x128 windows, pixel for pixel
        y, x = np.unravel_index(np.argmin(cv2.matchTemplate(photo, sharp, cv2.TM_SQDIFF)), (129, 129))
        np.testing.assert_array_equal(photo[y:y + 128, x:x + 128], sharp)
        aligned.append(_psnr(blurry[8:-8, 8:-8], sharp[8:-8, 8:-8]))
        shifted.append(_psnr(blurry[8:-8, 8:-8], np.roll(sharp, (3, -3), axis=(0, 1))[8:-8, 8:-8]))
    assert all(a > s for a, s in zip(aligned, shifted, strict=True)), (aligned, shifted)


def test_h264_roundtrip_degrades_with_crf_and_keeps_colour(photo):
    from streamsr.data.synthetic import h264_roundtrip
    crop = np.ascontiguousarray(photo[:48, :64])
    q = {crf: _psnr(h264_roundtrip(crop, crf), crop) for crf in (8, 20, 34)}
    assert q[8] > q[20] > q[34], q
    assert 30 < q[8] < 60 and q[34] < 32, q
    grey = np.full((32, 32, 3), (200, 60, 30), np.uint8)  # a flat colour survives 4:2:0 and H.264
    out = h264_roundtrip(grey, 12)
    assert out.shape == grey.shape and np.abs(out.astype(int) - grey).max() <= 3
