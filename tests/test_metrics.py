"""PSNR, SSIM and luma (streamsr.metrics) against independent expectations (scikit-image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from streamsr.metrics import psnr, rgb_to_y, ssim


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()[100:228, 150:310].astype(np.float64) / 255.0


def test_psnr_of_uniform_error():
    x = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    # every pixel off by 0.1 -> MSE 0.01 -> 20 dB
    assert psnr(x + 0.1, x).item() == pytest.approx(20.0, abs=1e-9)
    assert psnr(x + 0.01, x).item() == pytest.approx(40.0, abs=1e-6)
    assert psnr(x * 255 + 1, x * 255, data_range=255).item() == pytest.approx(
        10 * math.log10(255**2), abs=1e-6)


def test_psnr_per_image_and_mean():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    y = x.clone()
    y[0] += 0.1
    y[1] += 0.01
    per = psnr(y, x, reduction="none")
    assert per.tolist() == pytest.approx([20.0, 40.0], abs=1e-6)
    assert psnr(y, x).item() == pytest.approx(30.0, abs=1e-6)


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_ssim_matches_scikit_image(photo, sigma):
    rng = np.random.default_rng(0)
    noisy = np.clip(photo + rng.normal(0, sigma, photo.shape), 0, 1)
    ref = structural_similarity(photo, noisy, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=1.0)
    assert ssim(nchw(photo), nchw(noisy)).item() == pytest.approx(ref, abs=1e-6)
    assert psnr(nchw(photo), nchw(noisy)).item() == pytest.approx(
        peak_signal_noise_ratio(photo, noisy, data_range=1.0), abs=1e-6)


def test_ssim_y_channel_matches_scikit_image_on_luma(photo):
    blurred = (photo + np.roll(photo, 2, axis=1)) / 2
    y_ref = lambda a: (a @ np.array([65.481, 128.553, 24.966]) + 16) / 255.0  # noqa: E731
    ref = structural_similarity(y_ref(photo), y_ref(blurred), gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=1.0)
    assert ssim(nchw(photo), nchw(blurred), y_channel=True).item() == pytest.approx(ref, abs=1e-6)
    assert ssim(nchw(photo), nchw(photo)).item() == pytest.approx(1.0)


def test_rgb_to_y_range():
    assert rgb_to_y(torch.zeros(1, 3, 1, 1)).item() == pytest.approx(16 / 255)
    assert rgb_to_y(torch.ones(1, 3, 1, 1)).item() == pytest.approx(235 / 255, abs=1e-4)


def test_quality_and_evaluation_take_metrics_from_streamsr_metrics_not_training():
    import ast
    from pathlib import Path

    import streamsr

    root = Path(streamsr.__file__).parent
    for name in ("metrics.py", "quality.py", "evaluate.py"):
        for node in ast.walk(ast.parse((root / name).read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(m.startswith("streamsr.training") for m in mods), (name, mods)
