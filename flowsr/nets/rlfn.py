"""RLFN: Residual Local Feature Network, a lightweight x4 SR network (544k parameters).

Kong et al., "Residual Local Feature Network for Efficient Super-Resolution", CVPRW 2022 (NTIRE 2022
efficient SR challenge, runtime track winner); weights and reference code: github.com/bytedance/RLFN
(Apache-2.0).

``RLFN()(lq)``: ``lq`` (B, 3, h, w) RGB in [0, 1] -> (B, 3, 4h, 4w) RGB in about [0, 1], not clamped. The
authors' network works on [0, 255] (no mean shift): the input is multiplied by 255 and the output
divided by 255 inside :meth:`RLFN.forward`. Parameter names follow the authors' state dict, so their
weights load unchanged with ``strict=True``.

Layout: 3x3 conv -> ``blocks`` RLFBs (each: three 3x3 conv + LeakyReLU(0.05), local residual, 1x1 conv,
ESA) -> 3x3 conv -> + shallow features -> 3x3 conv + pixel shuffle. ESA here has a single 3x3 conv on
its coarse branch (no ``conv_max`` / ``conv3_``) and no activation inside.

ESA's stride-2 conv and 7x7/3 max-pool need a side of at least :data:`MIN_SIDE` = 15 LR pixels; smaller
inputs are replicate-padded at the bottom/right up to 15 and the output cropped back, so any size >= 1
works (the padded pixels then take part in ESA's coarse attention map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowsr.nets.bsrn import MIN_SIDE, pad_to_min_side  # ESA's input limit, the same in both networks

__all__ = ["RLFN", "MIN_SIDE"]

class ESA(nn.Module):
    """Enhanced spatial attention (RFANet/RFDN style, reduced): a coarse attention map from a strided,
    max-pooled branch, added to a 1x1 branch, sigmoid, multiplied onto the input."""

    def __init__(self, esa_channels: int, channels: int):
        super().__init__()
        f = esa_channels
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.conv1(x)
        # coarse branch: stride-2 conv, max-pool 7/3, 3x3 conv, bilinear back to the input size
        coarse = self.conv3(F.max_pool2d(self.conv2(c1), kernel_size=7, stride=3))
        coarse = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(coarse + self.conv_f(c1)))


class RLFB(nn.Module):
    """Residual local feature block: three 3x3 conv + LeakyReLU(0.05), residual, 1x1 conv, ESA."""

    def __init__(self, channels: int, esa_channels: int = 16):
        super().__init__()
        self.c1_r = nn.Conv2d(channels, channels, 3, padding=1)
        self.c2_r = nn.Conv2d(channels, channels, 3, padding=1)
        self.c3_r = nn.Conv2d(channels, channels, 3, padding=1)
        self.c5 = nn.Conv2d(channels, channels, 1)
        self.esa = ESA(esa_channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for conv in (self.c1_r, self.c2_r, self.c3_r):
            out = F.leaky_relu(conv(out), 0.05)
        return self.esa(self.c5(out + x))


class RLFN(nn.Module):
    """RLFN x``scale`` (see the module docstring); the published x4 model is ``RLFN(52, 6, 16, 4)``."""

    size_multiple = 1  # any input size works (small ones are padded internally)

    def __init__(self, channels: int = 52, blocks: int = 6, esa_channels: int = 16, scale: int = 4):
        super().__init__()
        self.scale, self.blocks = scale, blocks
        self.conv_1 = nn.Conv2d(3, channels, 3, padding=1)
        for i in range(1, blocks + 1):
            self.add_module(f"block_{i}", RLFB(channels, esa_channels))
        self.conv_2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(channels, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, lq: Tensor) -> Tensor:
        """(B, 3, h, w) RGB in [0, 1] -> (B, 3, scale*h, scale*w) RGB in about [0, 1] (unclamped)."""
        h, w = lq.shape[-2:]
        shallow = self.conv_1(pad_to_min_side(lq) * 255.0)  # the authors' range: [0, 255]
        f = shallow
        for i in range(1, self.blocks + 1):
            f = getattr(self, f"block_{i}")(f)
        out = self.upsampler(self.conv_2(f) + shallow) / 255.0
        return out[..., : h * self.scale, : w * self.scale]
