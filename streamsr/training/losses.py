"""The paper's joint loss: MSE on the x4 image + alpha * (Charbonnier + edge) on each LR stage.

L = MSE(H_hat, H) + alpha * sum_s [ Charbonnier(L_s, L) + edge_weight * Edge(L_s, L) ]
with alpha = 0.5 (paper) and edge_weight = 0.05 (the authors' code, as MPRNet's training).
Charbonnier and edge terms average per-pixel values, as MPRNet's implementation does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-3


def charbonnier(x: Tensor, y: Tensor, eps: float = EPS) -> Tensor:
    """mean(sqrt((x - y)^2 + eps^2)): an L1 that stays smooth at zero."""
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def _gauss5(x: Tensor) -> Tensor:
    """Depthwise 5x5 binomial-like blur ([.05 .25 .4 .25 .05] squared), replicate borders."""
    k1 = torch.tensor([0.05, 0.25, 0.4, 0.25, 0.05], dtype=x.dtype, device=x.device)
    k = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k, groups=x.shape[1])


def laplacian(x: Tensor) -> Tensor:
    """One Laplacian-pyramid band: the image minus its blurred, 2x decimated and re-expanded copy."""
    low = _gauss5(x)
    up = torch.zeros_like(low)
    up[..., ::2, ::2] = low[..., ::2, ::2] * 4
    return x - _gauss5(up)


def edge_loss(x: Tensor, y: Tensor, eps: float = EPS) -> Tensor:
    """Charbonnier distance between the Laplacians of x and y."""
    return charbonnier(laplacian(x), laplacian(y), eps)


class LossTerms(NamedTuple):
    total: Tensor
    sr: Tensor  # MSE of the x4 image
    char: Tensor  # sum over stages of Charbonnier
    edge: Tensor  # sum over stages of the edge loss


def joint_loss(out, lr_sharp: Tensor, hr: Tensor, alpha: float = 0.5,
               edge_weight: float = 0.05) -> LossTerms:
    """The joint loss of a `DeblurSROutput` against the sharp LR and HR images."""
    sr = F.mse_loss(out.hr.float(), hr.float())
    char = sum(charbonnier(s.float(), lr_sharp.float()) for s in out.stages)
    edge = sum(edge_loss(s.float(), lr_sharp.float()) for s in out.stages)
    total = sr + alpha * (char + edge_weight * edge)
    return LossTerms(total, sr, char, edge)  # type: ignore[arg-type]
