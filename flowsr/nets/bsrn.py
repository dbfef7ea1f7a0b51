"""BSRN: Blueprint Separable Residual Network, a lightweight x4 SR network (352k parameters).

Li et al., "Blueprint Separable Residual Network for Efficient Image Super-Resolution", CVPRW 2022
(NTIRE 2022 efficient SR challenge); weights and reference code: github.com/xiaom233/BSRN (MIT).

``BSRN()(lq)``: ``lq`` (B, 3, h, w) RGB in [0, 1] -> (B, 3, 4h, 4w) RGB in about [0, 1], not clamped.
Parameter names follow the authors' state dict, so their weights load unchanged with ``strict=True``.

Layout: the input repeated 4 times along channels (12 channels) -> BSConv -> ``blocks`` ESDBs (each:
three BSConv residual steps, each also giving a 1x1 "distilled" half-width feature, a fourth
BSConv, 1x1 fusion, ESA, CCA, block residual) -> 1x1 fusion of every block's output + GELU -> BSConv
-> + shallow features -> 3x3 conv + pixel shuffle. BSConvU is a pointwise conv (no bias) followed by a
depthwise conv. Activations are GELU (exact, erf), except the ReLU inside CCA.

ESA's stride-2 conv and 7x7/3 max-pool need a side of at least :data:`MIN_SIDE` = 15 LR pixels; smaller
inputs are replicate-padded at the bottom/right up to 15 and the output cropped back, so any size >= 1
works (the padded pixels then take part in ESA's coarse attention map and CCA's statistics). CCA's
per-channel mean and std span the whole input, so tiles are not exactly the whole image's crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BSRN", "MIN_SIDE"]

MIN_SIDE = 15  # smallest LR side ESA accepts: conv 3x3/2 (no padding) gives 7, enough for max-pool 7x7/3


def pad_to_min_side(x: Tensor, side: int = MIN_SIDE) -> Tensor:
    """Replicate-pad (B, C, h, w) at the bottom/right to at least ``side`` x ``side`` (zero-width if large enough).

    The amounts are symbolic under ``torch.export``, so one exported graph serves every size.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, torch.sym_max(side - w, 0), 0, torch.sym_max(side - h, 0)), mode="replicate")


class BSConvU(nn.Module):
    """Blueprint separable conv (unconstrained): pointwise 1x1 (no bias), then depthwise k x k."""

    def __init__(self, cin: int, cout: int, stride: int = 1, padding: int = 1):
        super().__init__()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.dw = nn.Conv2d(cout, cout, 3, stride=stride, padding=padding, groups=cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dw(self.pw(x))


class CCA(nn.Module):
    """Contrast-aware channel attention: per-channel (std + mean) over space -> 1x1 squeeze/excite -> scale."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(),
                                     nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()  # population std
        return x * self.conv_du(std + mean)


class ESA(nn.Module):
    """Enhanced spatial attention (RFANet/RFDN style) with BSConvs and GELU, on ``channels // 4`` channels."""

    def __init__(self, channels: int):
        super().__init__()
        f = channels // 4
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = BSConvU(f, f, stride=2, padding=0)
        self.conv_max = BSConvU(f, f)
        self.conv3 = BSConvU(f, f)
        self.conv3_ = BSConvU(f, f)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.conv1(x)
        # coarse branch: stride-2 conv, max-pool 7/3, three BSConvs, bilinear back to the input size
        coarse = F.max_pool2d(self.conv2(c1), kernel_size=7, stride=3)
        coarse = self.conv3_(F.gelu(self.conv3(F.gelu(self.conv_max(coarse)))))
        coarse = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(coarse + self.conv_f(c1)))


class ESDB(nn.Module):
    """Efficient separable distillation block: 3 distillation steps, fusion, ESA, CCA, residual."""

    def __init__(self, channels: int):
        super().__init__()
        d = channels // 2
        self.c1_d, self.c1_r = nn.Conv2d(channels, d, 1), BSConvU(channels, channels)
        self.c2_d, self.c2_r = nn.Conv2d(channels, d, 1), BSConvU(channels, channels)
        self.c3_d, self.c3_r = nn.Conv2d(channels, d, 1), BSConvU(channels, channels)
        self.c4 = BSConvU(channels, d)
        self.c5 = nn.Conv2d(4 * d, channels, 1)
        self.esa = ESA(channels)
        self.cca = CCA(channels)

    def forward(self, x: Tensor) -> Tensor:
        distilled, r = [], x
        # three steps: a distilled 1x1 feature, and a residual BSConv refinement passed on
        for conv_d, conv_r in ((self.c1_d, self.c1_r), (self.c2_d, self.c2_r), (self.c3_d, self.c3_r)):
            distilled.append(F.gelu(conv_d(r)))
            r = F.gelu(conv_r(r) + r)
        out = self.c5(torch.cat([*distilled, F.gelu(self.c4(r))], dim=1))
        return self.cca(self.esa(out)) + x


class _PixelShuffleDirect(nn.Module):
    """3x3 conv to ``3 * scale**2`` channels + pixel shuffle (named as in the authors' state dict)."""

    def __init__(self, channels: int, scale: int):
        super().__init__()
        self.upsampleOneStep = nn.Sequential(nn.Conv2d(channels, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: Tensor) -> Tensor:
        return self.upsampleOneStep(x)


class BSRN(nn.Module):
    """BSRN x``scale`` (see the module docstring); the published x4 model is ``BSRN(64, 8, 4)``."""

    size_multiple = 1  # any input size works (small ones are padded internally)

    def __init__(self, channels: int = 64, blocks: int = 8, scale: int = 4):
        super().__init__()
        self.scale, self.blocks = scale, blocks
        self.fea_conv = BSConvU(3 * 4, channels)
        for i in range(1, blocks + 1):
            self.add_module(f"B{i}", ESDB(channels))
        self.c1 = nn.Conv2d(channels * blocks, channels, 1)
        self.c2 = BSConvU(channels, channels)
        self.upsampler = _PixelShuffleDirect(channels, scale)

    def forward(self, lq: Tensor) -> Tensor:
        """(B, 3, h, w) RGB in [0, 1] -> (B, 3, scale*h, scale*w) RGB in about [0, 1] (unclamped)."""
        h, w = lq.shape[-2:]
        x = pad_to_min_side(lq)
        shallow = self.fea_conv(x.repeat(1, 4, 1, 1))  # the authors feed the image 4 times (12 channels)
        feats, f = [], shallow
        for i in range(1, self.blocks + 1):
            f = getattr(self, f"B{i}")(f)
            feats.append(f)
        deep = self.c2(F.gelu(self.c1(torch.cat(feats, dim=1)))) + shallow
        return self.upsampler(deep)[..., : h * self.scale, : w * self.scale]
