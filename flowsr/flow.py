"""The flow path for super-resolution: source, interpolation, target velocity and time grids.

Convention: t=0 is the noisy LR side, t=1 the HR side. Images are (B, 3, H, W) in [-1, 1];
``cond`` is the clean bicubic-upsampled LR image ``up(lq)``. Times are (B,) tensors in [0, 1].
Random draws use the global torch RNG unless a ``generator`` is passed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def expand_t(t: Tensor | float, x: Tensor) -> Tensor | float:
    """Reshape a per-row time (B,) to (B, 1, 1, 1) to broadcast against ``x``; floats pass through."""
    if not isinstance(t, Tensor) or t.ndim == 0:
        return t
    return t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def source(cond: Tensor, sigma_p: float = 0.2, noise: Tensor | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """Source sample ``x0 = sqrt(1 - sigma_p^2) * cond + sigma_p * eps``, eps ~ N(0, I).

    The variance-preserving noisy LR start of the path (OFTSR, arXiv 2412.09465, in our t=0 -> LR convention).
    ``cond``: (B, 3, H, W) in [-1, 1]; ``noise``: optional fixed eps of the same shape.
    """
    if noise is None:
        noise = torch.randn(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
    return math.sqrt(1.0 - sigma_p**2) * cond + sigma_p * noise


def interpolate(x0: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
    """Linear path ``x_t = (1 - t) x0 + t x1``; ``t`` is (B,) or a scalar."""
    t = expand_t(t, x0)
    return (1 - t) * x0 + t * x1


def target_velocity(x0: Tensor, x1: Tensor) -> Tensor:
    """Conditional velocity of the linear path, ``d x_t / dt = x1 - x0``."""
    return x1 - x0


def sample_t_uniform(n: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """n times ~ U[0, 1), shape (n,)."""
    return torch.rand(n, generator=generator, device=device, dtype=dtype)


def sample_t_logit_normal(n: int, mean: float = 0.0, std: float = 1.0,
                          device: torch.device | str | None = None,
                          generator: torch.Generator | None = None,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """n times ``sigmoid(N(mean, std^2))`` in (0, 1), shape (n,); median ``sigmoid(mean)``.

    Logit-normal time sampling of SD3 (Esser et al. 2024, arXiv 2403.03206, Sec. 3.1).
    """
    z = torch.randn(n, generator=generator, device=device, dtype=dtype)
    return torch.sigmoid(mean + std * z)


def time_grid(steps: int, t_end: float = 1.0, kind: str = "uniform") -> Tensor:
    """Sampling grid ``0 = t_0 < ... < t_steps = t_end``, a float64 tensor of length steps + 1.

    kind: ``"uniform"`` (equal steps) or ``"quadratic"`` (``t_k = t_end (k/steps)^2``,
    finer near the noisy LR side t=0).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    k = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        return t_end * k
    if kind == "quadratic":
        return t_end * k**2
    raise ValueError(f"unknown time grid kind {kind!r}; use 'uniform' or 'quadratic'")
