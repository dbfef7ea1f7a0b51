"""Full-reference image metrics under the standard SR protocol (BasicSR's `calculate_psnr/ssim`).

Images are uint8 RGB; `crop_border` pixels are removed from every side; metrics are computed in
float64 on the BT.601 Y channel (kept as float, not rounded) or on RGB. SSIM follows Wang et al.
2004 as implemented by BasicSR: 11x11 Gaussian window (sigma 1.5), 'valid' filtering, averaged over
channels for RGB.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import correlate1d

from flowsr.ops import rgb_to_y

__all__ = ["image_metrics", "psnr", "ssim", "to_uint8"]


def to_uint8(img) -> np.ndarray:
    """Float image in [0, 1] -> uint8 (H, W, C) in [0, 255] (clip, x255, np.round).

    Args:
        img: torch (C, H, W) or numpy (H, W, C) / (H, W), float in [0, 1] (values outside are clipped).
    """
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(np.clip(np.asarray(img, dtype=np.float64), 0, 1) * 255.0).astype(np.uint8)


def _prepare(img: np.ndarray, crop_border: int, y_channel: bool) -> np.ndarray:
    """uint8 (H, W[, C]) -> float64 (H', W', C) in [0, 255]: grey to RGB, border crop, optional Y."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"metrics expect uint8 images, got {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:  # greyscale: replicate to RGB, as BasicSR reads it
        img = np.repeat(img, 3, axis=2)
    img = img.astype(np.float64)
    if crop_border > 0:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        img = rgb_to_y(img / 255.0)[..., None]
    return img


def _check_pair(sr: np.ndarray, gt: np.ndarray) -> None:
    if sr.shape != gt.shape:
        raise ValueError(f"image shapes differ: {sr.shape} vs {gt.shape}")


def psnr(sr: np.ndarray, gt: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB, peak 255: 10 log10(255^2 / MSE); inf for identical images.

    Args:
        sr, gt: uint8 (H, W, 3), or greyscale (H, W) / (H, W, 1) (replicated to RGB first), in [0, 255].
        crop_border: pixels removed from each side before scoring (the SR scale, by convention).
        y_channel: score BT.601 Y (float, in [16, 235]) instead of RGB.
    """
    _check_pair(np.asarray(sr), np.asarray(gt))
    a, b = _prepare(sr, crop_border, y_channel), _prepare(gt, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1D Gaussian (cv2.getGaussianKernel); the 2D window is its outer product."""
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _filter_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 2D correlation of an (H, W) image, keeping only the 'valid' region."""
    out = correlate1d(correlate1d(img, k, axis=0), k, axis=1)
    r = len(k) // 2
    return out[r:-r, r:-r]


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W) float64 images in [0, 255] (BasicSR `_ssim`)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = _gaussian_1d()
    # local means, variances and covariance under the Gaussian window
    mu_a, mu_b = _filter_valid(a, k), _filter_valid(b, k)
    var_a = _filter_valid(a * a, k) - mu_a**2
    var_b = _filter_valid(b * b, k) - mu_b**2
    cov = _filter_valid(a * b, k) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(sr: np.ndarray, gt: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """Structural similarity (Wang et al. 2004), in [-1, 1], 1 for identical images.

    Args:
        sr, gt: uint8 (H, W, 3), or greyscale (H, W) / (H, W, 1) (replicated to RGB first), in [0, 255];
            at least 11x11 after cropping.
        crop_border: pixels removed from each side before scoring (the SR scale, by convention).
        y_channel: score BT.601 Y (float, in [16, 235]); else the mean SSIM over the R, G, B channels.
    """
    _check_pair(np.asarray(sr), np.asarray(gt))
    a, b = _prepare(sr, crop_border, y_channel), _prepare(gt, crop_border, y_channel)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def image_metrics(sr: np.ndarray, gt: np.ndarray, crop_border: int = 0) -> dict[str, float]:
    """PSNR (dB) and SSIM on Y and on RGB, for uint8 (H, W, C) images in [0, 255].

    Returns:
        {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"} as Python floats.
    """
    return {
        "psnr_y": psnr(sr, gt, crop_border, y_channel=True),
        "ssim_y": ssim(sr, gt, crop_border, y_channel=True),
        "psnr_rgb": psnr(sr, gt, crop_border, y_channel=False),
        "ssim_rgb": ssim(sr, gt, crop_border, y_channel=False),
    }
