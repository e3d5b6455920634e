"""Losses and metrics against independent expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from streamsr.metrics import psnr, rgb_to_y, ssim
from streamsr.models import DeblurSROutput
from streamsr.training.losses import charbonnier, edge_loss, joint_loss, laplacian


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


def test_charbonnier_values():
    x = torch.zeros(1, 3, 4, 4)
    assert charbonnier(x, x).item() == pytest.approx(1e-3)  # sqrt(eps^2)
    assert charbonnier(x + 0.3, x).item() == pytest.approx(math.sqrt(0.09 + 1e-6))


def test_laplacian_of_constant_is_zero_and_edge_loss_sees_edges():
    flat = torch.full((1, 3, 16, 16), 0.7)
    # zero away from the border (the pyramid's replicate padding touches the outer 2 pixels)
    assert laplacian(flat)[..., 2:-2, 2:-2].abs().max().item() < 1e-6
    # the band is linear, so a brightness shift changes it only at the border
    shifted = laplacian(flat + 0.2) - laplacian(flat)
    assert shifted[..., 2:-2, 2:-2].abs().max().item() < 1e-6
    step = flat.clone()
    step[..., 8:] = 0.1
    assert edge_loss(step, flat).item() > 0.01


def mprnet_laplacian_np(img: np.ndarray) -> np.ndarray:
    """MPRNet's EdgeLoss.laplacian_kernel, written again in NumPy for an (N, C, H, W) array.

    5x5 kernel = outer([.05 .25 .4 .25 .05]) per channel, replicate padding; filter, keep every
    2nd pixel times 4 (zeros elsewhere), filter again, and return img - that.
    """
    k1 = np.array([0.05, 0.25, 0.4, 0.25, 0.05])
    kernel = np.outer(k1, k1)

    def gauss(a: np.ndarray) -> np.ndarray:
        h, w = a.shape[-2:]
        padded = np.pad(a, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
        out = np.zeros_like(a)
        for dy in range(5):
            for dx in range(5):
                out += kernel[dy, dx] * padded[..., dy:dy + h, dx:dx + w]
        return out

    filtered = gauss(img)
    up = np.zeros_like(filtered)
    up[..., ::2, ::2] = filtered[..., ::2, ::2] * 4
    return img - gauss(up)


def test_edge_loss_matches_mprnet_edge_loss_in_numpy():
    rng = np.random.default_rng(7)
    for shape in [(2, 3, 16, 24), (1, 3, 13, 9)]:  # even and odd sizes
        x, y = rng.random(shape), rng.random(shape)
        band = mprnet_laplacian_np(x)
        np.testing.assert_allclose(laplacian(torch.from_numpy(x)).numpy(), band, rtol=0, atol=1e-12)
        diff = band - mprnet_laplacian_np(y)
        expected = np.mean(np.sqrt(diff * diff + 1e-3 * 1e-3))  # MPRNet's CharbonnierLoss
        got = edge_loss(torch.from_numpy(x), torch.from_numpy(y)).item()
        assert got == pytest.approx(expected, rel=1e-12)
    # float32 (what training uses) agrees to float32 precision
    x, y = rng.random((1, 3, 20, 20)), rng.random((1, 3, 20, 20))
    diff = mprnet_laplacian_np(x) - mprnet_laplacian_np(y)
    expected = np.mean(np.sqrt(diff * diff + 1e-6))
    got = edge_loss(torch.from_numpy(x).float(), torch.from_numpy(y).float()).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_joint_loss_defaults_are_alpha_half_and_edge_weight_005():
    torch.manual_seed(1)
    hr, lr = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 8, 8)
    out = DeblurSROutput(hr.flip(-1), tuple(torch.rand(1, 3, 8, 8) for _ in range(3)))
    default = joint_loss(out, lr, hr)
    assert default.char.item() > 0 and default.edge.item() > 0  # both weights matter here
    assert default.total.item() == joint_loss(out, lr, hr, alpha=0.5, edge_weight=0.05).total.item()
    for alpha, edge_weight in [(0.4, 0.05), (0.5, 0.06), (1.0, 0.05), (0.5, 1.0)]:
        other = joint_loss(out, lr, hr, alpha=alpha, edge_weight=edge_weight).total.item()
        assert other != pytest.approx(default.total.item(), rel=1e-6), (alpha, edge_weight)


def test_joint_loss_combines_terms_as_the_paper():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 32, 32)
    lr = torch.rand(2, 3, 8, 8)
    stages = tuple(lr + 0.1 * torch.randn_like(lr) for _ in range(3))
    out = DeblurSROutput(hr + 0.05, stages)
    terms = joint_loss(out, lr, hr, alpha=0.5, edge_weight=0.05)
    assert terms.sr.item() == pytest.approx(0.0025, rel=1e-5)
    char = sum(charbonnier(s, lr) for s in stages)
    edge = sum(edge_loss(s, lr) for s in stages)
    assert terms.total.item() == pytest.approx((0.0025 + 0.5 * (char + 0.05 * edge)).item(), rel=1e-6)
    assert joint_loss(out, lr, hr, edge_weight=1.0).total > terms.total
