"""Image operations shared by data, degradations and metrics: MATLAB bicubic resize, modcrop, BT.601 Y.

`imresize` follows MATLAB's `imresize(img, scale, 'bicubic')` (cubic kernel a = -0.5, antialiased
when downscaling, symmetric border padding), the convention behind every bicubic SR benchmark; the
same index/weight computation is used by BasicSR's `matlab_functions.imresize`. Each axis is resized
by a dense (out x in) weight matrix with the border padding folded in, so the torch path is two
batched matmuls. Like MATLAB, uint8 images are rounded back to uint8 after each axis.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["imresize", "modcrop", "rgb_to_y"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


@lru_cache(maxsize=64)
def _weight_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """Dense (out_len, in_len) float64 resize matrix for one axis, as MATLAB's `contributions`."""
    # antialiasing: widen the kernel by 1/scale when downscaling
    kernel_scale = min(scale, 1.0)
    width = 4.0 / kernel_scale
    # output pixel centres mapped to input coordinates (1-based, as MATLAB)
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    # kernel weights, normalised per output pixel
    w = kernel_scale * _cubic((u[:, None] - idx) * kernel_scale)
    w = w / w.sum(axis=1, keepdims=True)
    # symmetric padding: index i outside [1, in_len] mirrors onto the border (edge pixel repeated)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), src.ravel()), w.ravel())
    mat.setflags(write=False)
    return mat


@lru_cache(maxsize=32)
def _torch_weight(in_len: int, out_len: int, scale: float, device: torch.device, dtype: torch.dtype):
    """The numpy weight matrix as a tensor on `device`, cached per (in, out, scale, device, dtype)."""
    return torch.from_numpy(_weight_matrix(in_len, out_len, scale).copy()).to(device=device, dtype=dtype)


def _plan(h: int, w: int, scale: float | None, size: tuple[int, int] | None):
    """Output size and per-axis scale, as MATLAB: size -> scale = out/in, scale -> out = ceil(in*scale)."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    if size is not None:
        out_h, out_w = int(size[0]), int(size[1])
        return out_h, out_w, out_h / h, out_w / w
    # small tolerance so that e.g. 255 * (1/3) gives 85, not 86
    out_h, out_w = (math.ceil(n * scale - 1e-9) for n in (h, w))
    return out_h, out_w, float(scale), float(scale)


def imresize(img, scale: float | None = None, size: tuple[int, int] | None = None):
    """MATLAB-compatible bicubic resize (antialiased when downscaling).

    Args:
        img: numpy (H, W) or (H, W, C), or torch (C, H, W) or (B, C, H, W) on any device; uint8 in
            [0, 255] or float in any range.
        scale: output/input size ratio, e.g. 1/4 to downscale by 4, 4 to upscale by 4; the output size
            is ceil(scale * input size).
        size: output (H, W) instead of scale; each axis then uses scale = out/in.

    Returns:
        The resized image, same type, layout and dtype as the input.
        uint8: computed in float64 and, as MATLAB does, rounded to uint8 (clip to [0, 255], half away
        from zero) after EACH axis; this reproduces MATLAB bit-exactly (e.g. Set5 LR_bicubic X2-X4).
        float: unrounded, unclipped; numpy in float64, torch in float32 (float64 if given float64).
        Round a float result with `np.floor(np.clip(x, 0, 255) + 0.5)` to get a single final rounding
        (how Set5 LR_bicubic X8 was made).
    """
    if isinstance(img, torch.Tensor):
        return _imresize_torch(img, scale, size)
    img = np.asarray(img)
    is_uint8 = img.dtype == np.uint8
    h, w = img.shape[:2]
    out_h, out_w, sh, sw = _plan(h, w, scale, size)
    x = img.astype(np.float64)
    for axis in _axis_order(sh, sw):
        mat = _weight_matrix(x.shape[axis], (out_h, out_w)[axis], (sh, sw)[axis])
        x = np.moveaxis(np.tensordot(mat, x, axes=([1], [axis])), 0, axis)
        if is_uint8:
            x = _matlab_round(x)
    if is_uint8:
        return x.astype(np.uint8)
    return x.astype(img.dtype) if np.issubdtype(img.dtype, np.floating) else x


def _axis_order(sh: float, sw: float) -> tuple[int, int]:
    """MATLAB resizes the axis with the smaller scale first, height on ties (0 = H, 1 = W)."""
    return (0, 1) if sh <= sw else (1, 0)


def _matlab_round(x):
    """MATLAB's uint8 conversion, kept as float: clip to [0, 255], round half away from zero."""
    if isinstance(x, torch.Tensor):
        return torch.floor(x.clamp(0, 255) + 0.5)
    return np.floor(np.clip(x, 0, 255) + 0.5)


def _imresize_torch(img: torch.Tensor, scale, size) -> torch.Tensor:
    """Torch path of `imresize`: (C, H, W) or (B, C, H, W), two matmuls."""
    if img.dim() not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(img.shape)}")
    is_uint8 = img.dtype == torch.uint8
    if not (is_uint8 or img.is_floating_point()):
        raise TypeError(f"imresize expects a float or uint8 tensor, got {img.dtype}")
    h, w = img.shape[-2:]
    out_h, out_w, sh, sw = _plan(h, w, scale, size)
    dtype = torch.float64 if img.dtype in (torch.float64, torch.uint8) else torch.float32
    x = img.to(dtype)
    for axis in _axis_order(sh, sw):
        if axis == 0:  # rows: Wh @ x
            x = _torch_weight(h, out_h, sh, img.device, dtype) @ x
        else:  # columns: x @ Ww^T
            x = x @ _torch_weight(w, out_w, sw, img.device, dtype).T
        if is_uint8:
            x = _matlab_round(x)
    return x.to(img.dtype)


def modcrop(img, scale: int):
    """Crop the bottom/right so that H and W are multiples of `scale`.

    Args:
        img: numpy (H, W) or (H, W, C), or torch (..., H, W); any dtype and value range.
        scale: integer factor.

    Returns:
        A view of the same type and value range, of size (H - H % scale, W - W % scale).
    """
    if isinstance(img, torch.Tensor):
        h, w = img.shape[-2:]
        return img[..., : h - h % scale, : w - w % scale]
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale, ...]


_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img):
    """ITU-R BT.601 luma: Y = 16 + 65.481 R + 128.553 G + 24.966 B.

    Args:
        img: RGB in [0, 1], float; numpy (H, W, 3) or torch (..., 3, H, W).

    Returns:
        Y as float in [16, 235], numpy (H, W) or torch (..., H, W), unrounded.
    """
    if isinstance(img, torch.Tensor):
        weights = torch.tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device)
        return 16.0 + torch.einsum("...chw,c->...hw", img, weights)
    return 16.0 + np.asarray(img) @ np.array(_Y_WEIGHTS)


def lanczos(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (C,H,W) float in [0,1] to (C,*size) with Pillow's Lanczos (a = 3) filter, in float32 per
    plane (nothing is rounded to 8 bits); the filter widens with the scale when shrinking, so downscaling
    is antialiased. Clamped to [0,1] (Lanczos overshoots at edges). What ``flowsr upscale --outscale`` uses."""
    import PIL.Image

    height, width = size
    planes = [PIL.Image.fromarray(np.ascontiguousarray(plane.float().cpu().numpy()))
              .resize((width, height), PIL.Image.Resampling.LANCZOS) for plane in img]
    return torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in planes])).clamp_(0, 1)
