"""The joint deblurring + x4 super-resolution model of Shoyan et al.

MPRNet trunk -> each stage's features refined by a CAB -> concatenated -> 3x3 fusion conv ->
GFN-style reconstruction (residual blocks, two pixel-shuffle x2 steps) -> the x4 image.
The trunk's three deblurred LR images are returned too: they carry the deblurring loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from streamsr.models.configs import PAPER, DeblurSRConfig
from streamsr.models.mprnet import CAB, MPRNet, conv, pad_to_multiple
from streamsr.models.ops import resize_bicubic


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus the input (biases on, as in GFN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(torch.relu(self.conv1(x))) + x


class Reconstruction(nn.Module):
    """Residual blocks, then x2 -> x2 pixel-shuffle up-sampling, then RGB in (0, 1)."""

    def __init__(self, channels: int, n_blocks: int, sigmoid: bool = True) -> None:
        super().__init__()
        self.sigmoid = sigmoid
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(n_blocks)])
        self.up1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)
        self.up2 = nn.Conv2d(channels, 4 * channels, 3, padding=1)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, 3, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(x)
        # in place: these run at x2 and x4 resolution, where a fresh output tensor per activation
        # cost ~30 % of the head on a CPU (same values; autograd needs neither input kept)
        x = nn.functional.leaky_relu(self.shuffle(self.up1(x)), 0.1, inplace=True)
        x = nn.functional.leaky_relu(self.shuffle(self.up2(x)), 0.2, inplace=True)
        x = nn.functional.leaky_relu(self.conv(x), 0.2, inplace=True)
        x = self.out(x)
        return torch.sigmoid(x) if self.sigmoid else x


class BicubicUpsample(nn.Module):
    """x `scale` antialiased bicubic (`resize_bicubic`): the skip of `bicubic_skip` models.

    A module of its own so that export can put an equal graph of plain convolutions in its place
    (`streamsr.backends.graph.SeparableBicubic`); it has no weights, so state dicts are unchanged.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return resize_bicubic(x, (self.scale * x.shape[-2], self.scale * x.shape[-1]))


class DeblurSROutput(NamedTuple):
    """`hr`: the x4 sharp image. `stages`: deblurred LR images, final stage (3) first."""

    hr: Tensor
    stages: tuple[Tensor, Tensor, Tensor]


class DeblurSR(nn.Module):
    """Blurry LR RGB in [0, 1] (any size) -> sharp x4 RGB in (0, 1) and the three LR stages."""

    def __init__(self, config: DeblurSRConfig = PAPER) -> None:
        super().__init__()
        self.config = config
        t = config.trunk
        self.trunk = MPRNet(t)
        act = self.trunk.act  # the network-wide shared PReLU
        n, k, r = t.n_feat, t.kernel_size, t.reduction
        self.reduce3 = conv(n + t.scale_orsnetfeats, n, k)  # ORSNet 128 ch -> 96
        self.refine1 = CAB(n, k, r, act)
        self.refine2 = CAB(n, k, r, act)
        self.refine3 = CAB(n, k, r, act)
        self.fuse = nn.Sequential(conv(3 * n, config.sr_feat, 3), act)
        self.reconstruct = Reconstruction(config.sr_feat, config.sr_blocks,
                                          sigmoid=not config.bicubic_skip)
        self.skip = BicubicUpsample(config.scale) if config.bicubic_skip else None
        if config.bicubic_skip:  # start exactly at bicubic: the correction begins at zero
            nn.init.zeros_(self.reconstruct.out.weight)
            nn.init.zeros_(self.reconstruct.out.bias)

    def forward(self, x: Tensor) -> DeblurSROutput:
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, 8)
        trunk = self.trunk(xp)
        f1, f2, f3 = trunk.features
        fused = self.fuse(torch.cat((self.refine1(f1), self.refine2(f2),
                                     self.refine3(self.reduce3(f3))), 1))
        s = self.config.scale
        hr = self.reconstruct(fused)
        if self.skip is not None:
            hr = hr + self.skip(xp)
            if not self.training:  # the sigmoid's range, without its gradient squashing
                hr = hr.clamp(0, 1)
        hr = hr[..., : s * h, : s * w]
        stages = tuple(img[..., :h, :w] for img in trunk.stages)
        return DeblurSROutput(hr, stages)  # type: ignore[arg-type]


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters, each shared tensor counted once (as `model.parameters()` yields)."""
    return sum(p.numel() for p in model.parameters())
