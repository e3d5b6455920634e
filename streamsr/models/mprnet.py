"""The MPRNet deblurring trunk (Zamir et al., CVPR 2021), written for streamsr.

Parameter names match the official GOPRO deblurring checkpoint (316 state_dict keys), so its
weights load with `strict=True`. Read top to bottom: convolution helpers, the channel attention
block (CAB), the supervised attention module (SAM), the U-Net encoder/decoder of stages 1-2, the
original-resolution subnetwork of stage 3, then the trunk itself.

Shapes: the input's height and width must be multiples of 8 (stage 1 works on quarter patches
that are down-sampled twice). `DeblurSR` pads for you; this module does not.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamsr.models.configs import MPRNetConfig


def conv(c_in: int, c_out: int, k: int, bias: bool = False, stride: int = 1) -> nn.Conv2d:
    """A 'same' convolution (odd kernel)."""
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias, stride=stride)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average -> C/r -> ReLU -> C -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int, bias: bool = False) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=bias),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=bias),
            nn.Sigmoid(),
        )

    def weights(self, x: Tensor) -> Tensor:
        """Per-channel gates in (0, 1), shape (N, C, 1, 1)."""
        return self.conv_du(x.mean(dim=(2, 3), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


class CAB(nn.Module):
    """Channel attention block: conv-act-conv, channel attention, plus the input.

    `act` is the one PReLU shared by every CAB of the network (MPRNet passes a single module
    around), so the whole network learns a single PReLU slope.
    """

    def __init__(self, channels: int, kernel_size: int, reduction: int, act: nn.Module,
                 bias: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels, kernel_size, bias), act,
                                  conv(channels, channels, kernel_size, bias))
        self.CA = ChannelAttention(channels, reduction, bias)

    def forward(self, x: Tensor) -> Tensor:
        r = self.body(x)
        return torch.addcmul(x, r, self.CA.weights(r))  # x + r * gate, one fused kernel


def cabs(n: int, channels: int, kernel_size: int, reduction: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(*[CAB(channels, kernel_size, reduction, act) for _ in range(n)])


class SAM(nn.Module):
    """Supervised attention: predicts the stage's restored image and gates features with it."""

    def __init__(self, channels: int, kernel_size: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = conv(channels, channels, kernel_size, bias)
        self.conv2 = conv(channels, 3, kernel_size, bias)
        self.conv3 = conv(3, channels, kernel_size, bias)

    def forward(self, x: Tensor, x_img: Tensor) -> tuple[Tensor, Tensor]:
        img = self.conv2(x) + x_img
        gate = torch.sigmoid(self.conv3(img))
        return torch.addcmul(x, self.conv1(x), gate), img


class DownSample(nn.Module):
    """Bilinear /2 then a 1x1 conv that widens by `extra` channels."""

    def __init__(self, channels: int, extra: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
                                  nn.Conv2d(channels, channels + extra, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear x2 then a 1x1 conv that narrows by `extra` channels."""

    def __init__(self, channels: int, extra: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(channels + extra, channels, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.up(x)


class SkipUpSample(UpSample):
    """UpSample plus a skip connection."""

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:  # type: ignore[override]
        return self.up(x) + skip


class Encoder(nn.Module):
    """Three-scale U-Net encoder. With `csff`, stage-2 fuses stage-1 encoder/decoder features."""

    def __init__(self, c: MPRNetConfig, act: nn.Module, csff: bool) -> None:
        super().__init__()
        n, s, k, r = c.n_feat, c.scale_unetfeats, c.kernel_size, c.reduction
        self.encoder_level1 = cabs(2, n, k, r, act)
        self.encoder_level2 = cabs(2, n + s, k, r, act)
        self.encoder_level3 = cabs(2, n + 2 * s, k, r, act)
        self.down12 = DownSample(n, s)
        self.down23 = DownSample(n + s, s)
        self.csff = csff
        if csff:
            widths = (n, n + s, n + 2 * s)
            for i, w in enumerate(widths, 1):
                setattr(self, f"csff_enc{i}", nn.Conv2d(w, w, 1, bias=False))
            for i, w in enumerate(widths, 1):
                setattr(self, f"csff_dec{i}", nn.Conv2d(w, w, 1, bias=False))

    def forward(self, x: Tensor, enc_prev: list[Tensor] | None = None,
                dec_prev: list[Tensor] | None = None) -> list[Tensor]:
        outs = []
        for i, (level, down) in enumerate(((self.encoder_level1, self.down12),
                                           (self.encoder_level2, self.down23),
                                           (self.encoder_level3, None))):
            x = level(x)
            if self.csff and enc_prev is not None and dec_prev is not None:
                x = (x + getattr(self, f"csff_enc{i + 1}")(enc_prev[i])
                     + getattr(self, f"csff_dec{i + 1}")(dec_prev[i]))
            outs.append(x)
            if down is not None:
                x = down(x)
        return outs


class Decoder(nn.Module):
    """Three-scale U-Net decoder with attention on the skip connections."""

    def __init__(self, c: MPRNetConfig, act: nn.Module) -> None:
        super().__init__()
        n, s, k, r = c.n_feat, c.scale_unetfeats, c.kernel_size, c.reduction
        self.decoder_level1 = cabs(2, n, k, r, act)
        self.decoder_level2 = cabs(2, n + s, k, r, act)
        self.decoder_level3 = cabs(2, n + 2 * s, k, r, act)
        self.skip_attn1 = CAB(n, k, r, act)
        self.skip_attn2 = CAB(n + s, k, r, act)
        self.up21 = SkipUpSample(n, s)
        self.up32 = SkipUpSample(n + s, s)

    def forward(self, enc: list[Tensor]) -> list[Tensor]:
        enc1, enc2, enc3 = enc
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        dec1 = self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))
        return [dec1, dec2, dec3]


class ORB(nn.Module):
    """Original-resolution block: `num_cab` CABs and a conv, plus the input."""

    def __init__(self, channels: int, c: MPRNetConfig, act: nn.Module) -> None:
        super().__init__()
        body = [CAB(channels, c.kernel_size, c.reduction, act) for _ in range(c.num_cab)]
        body.append(conv(channels, channels, c.kernel_size))
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


class ORSNet(nn.Module):
    """Stage 3: three ORBs at full resolution, fed with stage-2 encoder/decoder features."""

    def __init__(self, c: MPRNetConfig, act: nn.Module) -> None:
        super().__init__()
        n, s, o = c.n_feat, c.scale_unetfeats, c.scale_orsnetfeats
        self.orb1 = ORB(n + o, c, act)
        self.orb2 = ORB(n + o, c, act)
        self.orb3 = ORB(n + o, c, act)
        self.up_enc1 = UpSample(n, s)
        self.up_dec1 = UpSample(n, s)
        self.up_enc2 = nn.Sequential(UpSample(n + s, s), UpSample(n, s))
        self.up_dec2 = nn.Sequential(UpSample(n + s, s), UpSample(n, s))
        for name in ("conv_enc1", "conv_enc2", "conv_enc3", "conv_dec1", "conv_dec2", "conv_dec3"):
            setattr(self, name, nn.Conv2d(n, n + o, 1, bias=False))

    def forward(self, x: Tensor, enc: list[Tensor], dec: list[Tensor]) -> Tensor:
        x = self.orb1(x) + self.conv_enc1(enc[0]) + self.conv_dec1(dec[0])
        x = self.orb2(x) + self.conv_enc2(self.up_enc1(enc[1])) + self.conv_dec2(self.up_dec1(dec[1]))
        x = self.orb3(x) + self.conv_enc3(self.up_enc2(enc[2])) + self.conv_dec3(self.up_dec2(dec[2]))
        return x


class TrunkOutput(NamedTuple):
    """Deblurred LR images, final stage first, and each stage's full-resolution features."""

    stages: tuple[Tensor, Tensor, Tensor]  # (stage 3, stage 2, stage 1), like the official forward
    features: tuple[Tensor, Tensor, Tensor]  # (stage 1 decoder, stage 2 decoder, ORSNet output)


class MPRNet(nn.Module):
    """Multi-stage progressive restoration: 4 patches, then 2, then the whole image."""

    def __init__(self, config: MPRNetConfig | None = None) -> None:
        super().__init__()
        c = config or MPRNetConfig()
        self.config = c
        n, k, r, o = c.n_feat, c.kernel_size, c.reduction, c.scale_orsnetfeats
        act = nn.PReLU()  # one slope, shared by every CAB (see CAB)
        self.shallow_feat1 = nn.Sequential(conv(3, n, k), CAB(n, k, r, act))
        self.shallow_feat2 = nn.Sequential(conv(3, n, k), CAB(n, k, r, act))
        self.shallow_feat3 = nn.Sequential(conv(3, n, k), CAB(n, k, r, act))
        self.stage1_encoder = Encoder(c, act, csff=False)
        self.stage1_decoder = Decoder(c, act)
        self.stage2_encoder = Encoder(c, act, csff=True)
        self.stage2_decoder = Decoder(c, act)
        self.stage3_orsnet = ORSNet(c, act)
        self.sam12 = SAM(n, kernel_size=1)
        self.sam23 = SAM(n, kernel_size=1)
        self.concat12 = conv(2 * n, n, k)
        self.concat23 = conv(2 * n, n + o, k)
        self.tail = conv(n + o, 3, k)

    @property
    def act(self) -> nn.PReLU:
        """The shared PReLU (not registered twice, so the state_dict keeps the official keys)."""
        return self.shallow_feat1[1].body[1]

    def forward(self, x: Tensor) -> TrunkOutput:
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"MPRNet needs height and width divisible by 8, got {h}x{w}")
        top, bot = x[:, :, : h // 2], x[:, :, h // 2:]
        quarters = (top[..., : w // 2], top[..., w // 2:], bot[..., : w // 2], bot[..., w // 2:])

        # Stage 1: encode the four quarters in one batched call, join left/right along width,
        # decode the top and bottom halves together. (Parts are split back with chunk(4) and
        # chunk(2), not split(batch): an exported graph then takes any batch size.)
        enc_q = self.stage1_encoder(self.shallow_feat1(torch.cat(quarters, 0)))
        lt, rt, lb, rb = zip(*(e.chunk(4, 0) for e in enc_q), strict=True)
        feat1_top = [torch.cat(p, 3) for p in zip(lt, rt, strict=True)]
        feat1_bot = [torch.cat(p, 3) for p in zip(lb, rb, strict=True)]
        feat1 = [torch.cat(p, 0) for p in zip(feat1_top, feat1_bot, strict=True)]  # halves stacked on batch
        halves = torch.cat((top, bot), 0)
        res1 = self.stage1_decoder(feat1)
        sam1_feats, img1 = self.sam12(res1[0], halves)
        stage1_img = torch.cat(img1.chunk(2, 0), 2)

        # Stage 2: the two halves (still stacked on the batch axis), then joined along height.
        x2 = self.concat12(torch.cat((self.shallow_feat2(halves), sam1_feats), 1))
        feat2_halves = self.stage2_encoder(x2, feat1, res1)
        feat2 = [torch.cat(f.chunk(2, 0), 2) for f in feat2_halves]
        res2 = self.stage2_decoder(feat2)
        sam2_feats, stage2_img = self.sam23(res2[0], x)

        # Stage 3: the whole image at full resolution.
        x3 = self.concat23(torch.cat((self.shallow_feat3(x), sam2_feats), 1))
        x3 = self.stage3_orsnet(x3, feat2, res2)
        stage3_img = self.tail(x3) + x

        feat_stage1 = torch.cat(res1[0].chunk(2, 0), 2)
        return TrunkOutput((stage3_img, stage2_img, stage1_img), (feat_stage1, res2[0], x3))


def pad_to_multiple(x: Tensor, multiple: int = 8) -> Tensor:
    """Pad right/bottom to a multiple (reflect, as the official demo; replicate if too small)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)
