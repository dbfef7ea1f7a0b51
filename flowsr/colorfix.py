"""Colour correction after super-resolution: pull the output's colours back to those of the LR input.

Generative SR models can drift in colour (a global tint, a shifted brightness). One-step diffusion SR
tools (StableSR, OSEDiff, SeeSR) therefore offer a post-hoc fix against the bicubic-upsampled LR image:

- ``adain``: match each channel's mean and standard deviation (adaptive instance normalisation);
- ``wavelet``: keep the output's high frequencies and take the low frequencies (colour, shading) from the
  reference, with an à-trous (dilated) wavelet decomposition.

Reference: J. Wang, Z. Yue, S. Zhou, K. C. K. Chan, C. C. Loy, "Exploiting Diffusion Prior for Real-World
Image Super-Resolution" (StableSR), arXiv 2305.07015, 2023 (IJCV 2024), its colour-correction step;
AdaIN: X. Huang, S. Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
Normalization", ICCV 2017.

All functions take ``sr`` and ``ref`` of the same shape (B, C, H, W), float in [0, 1], and return a
(B, C, H, W) tensor in [0, 1] (``"none"`` returns ``sr`` itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("none", "wavelet", "adain")


def _check(sr: torch.Tensor, ref: torch.Tensor) -> None:
    """Raise ValueError unless sr and ref are (B, C, H, W) tensors of one shape."""
    if sr.dim() != 4 or sr.shape != ref.shape:
        raise ValueError(f"colour fix needs sr and ref of one (B, C, H, W) shape, got {tuple(sr.shape)} "
                         f"and {tuple(ref.shape)}; upsample the LR image to the SR size first")


def adain(sr: torch.Tensor, ref: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Give each image and channel of ``sr`` the mean and standard deviation of ``ref`` (AdaIN).

    sr, ref (B, C, H, W) in [0, 1], ``ref`` the bicubic-upsampled LR image. Statistics are per image and
    channel over H x W (population std); ``eps`` guards a flat ``sr`` channel. Returns (B, C, H, W) in
    [0, 1] (clamped). StableSR's ``adaptive_instance_normalization`` colour fix.
    """
    _check(sr, ref)
    sr_mean, ref_mean = sr.mean(dim=(-2, -1), keepdim=True), ref.mean(dim=(-2, -1), keepdim=True)
    sr_std = sr.std(dim=(-2, -1), keepdim=True, unbiased=False).clamp_min(eps)
    ref_std = ref.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return ((sr - sr_mean) / sr_std * ref_std + ref_mean).clamp(0, 1)


def wavelet_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """One à-trous step: the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16 with holes of ``dilation`` pixels,
    replicate padding. x (B, C, H, W); returns (B, C, H, W)."""
    c = x.shape[1]
    taps = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = (taps[:, None] * taps[None, :] / 16).expand(c, 1, 3, 3)
    padded = F.pad(x, [dilation] * 4, mode="replicate")
    return F.conv2d(padded, kernel, dilation=dilation, groups=c)


def wavelet_decomposition(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with x = high + low: ``low`` is x blurred by ``levels`` à-trous steps with dilations
    1, 2, 4, ..., 2**(levels-1); ``high`` is the sum of the detail bands. x (B, C, H, W)."""
    low = x
    for i in range(levels):
        low = wavelet_blur(low, 2**i)
    return x - low, low


def wavelet(sr: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Wavelet colour fix: the high frequencies of ``sr`` plus the low frequencies of ``ref``.

    sr, ref (B, C, H, W) in [0, 1], ``ref`` the bicubic-upsampled LR image; ``levels`` à-trous levels
    (the low band then holds structures wider than about 2**levels pixels). Returns (B, C, H, W) in [0, 1]
    (clamped). StableSR's ``wavelet_reconstruction`` colour fix.
    """
    _check(sr, ref)
    if levels < 1:
        raise ValueError(f"wavelet colour fix needs levels >= 1, got {levels}")
    high, _ = wavelet_decomposition(sr, levels)
    _, low = wavelet_decomposition(ref, levels)
    return (high + low).clamp(0, 1)


def color_fix(sr: torch.Tensor, ref: torch.Tensor, method: str) -> torch.Tensor:
    """Apply the colour fix ``method`` ("none", "wavelet" or "adain") to ``sr`` against ``ref``.

    sr, ref (B, C, H, W) in [0, 1] of one shape. Returns (B, C, H, W) in [0, 1]; "none" returns ``sr``.
    """
    if method == "none":
        return sr
    if method == "wavelet":
        return wavelet(sr, ref)
    if method == "adain":
        return adain(sr, ref)
    raise ValueError(f"unknown colour fix {method!r}; choose one of {', '.join(METHODS)}")
