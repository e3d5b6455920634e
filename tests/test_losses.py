"""The training losses (Charbonnier, edge, the joint loss) against independent expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamsr.models import DeblurSROutput
from streamsr.training.losses import charbonnier, edge_loss, joint_loss, laplacian


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None]


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
