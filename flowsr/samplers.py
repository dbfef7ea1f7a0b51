"""ODE samplers for the SR flow, all with one signature.

``sampler(net, x0, cond, ts, *, guidance=1.0, callback=None) -> x``

* ``net(x, t, cond, h=None)`` returns a velocity (B, 3, H, W); ``t``, ``h`` are (B,) in [0, 1].
  A distilled student's average velocity over [t, s] is ``u(x, t, s) = net(x, t, cond, h=s - t)``.
* ``x0``: source sample at ``ts[0]`` (usually ``flow.source(cond)``), ``cond = up(lq)`` in [-1, 1].
* ``ts``: increasing times (sequence of floats or 1-D tensor), e.g. ``flow.time_grid(steps)``.
* ``guidance`` w: ``v = v(x, t, 0) + w (v(x, t, c) - v(x, t, 0))`` (classifier-free guidance,
  Ho & Salimans 2022, zeros = null condition); w = 1 makes one call per evaluation, w != 1 two.
* ``callback({"i": step, "t": time reached, "x": state})`` after every step.

Wrap the network in ``CountingNet`` to measure the NFE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Callback = Callable[[dict], None] | None


class CountingNet:
    """Callable wrapper counting network evaluations in ``.nfe`` (a CFG step counts 2)."""

    def __init__(self, net: Callable) -> None:
        self.net = net
        self.nfe = 0

    def __call__(self, *args, **kwargs) -> Tensor:
        self.nfe += 1
        return self.net(*args, **kwargs)


def guided_velocity(net: Callable, x: Tensor, t: Tensor, cond: Tensor, guidance: float = 1.0,
                    h: Tensor | None = None) -> Tensor:
    """Classifier-free guided velocity ``v(x,t,0) + w (v(x,t,c) - v(x,t,0))`` (w=1: one call).

    Shared by the samplers and the distillation losses (teacher velocity, student average velocity
    when ``h`` is given).
    """
    kwargs = {} if h is None else {"h": h}
    v_c = net(x, t, cond, **kwargs)
    if guidance == 1.0:
        return v_c
    v_u = net(x, t, torch.zeros_like(cond), **kwargs)
    return v_u + guidance * (v_c - v_u)


def _times(ts: Sequence[float] | Tensor) -> list[float]:
    """Time grid as a list of Python floats."""
    ts = [float(t) for t in ts]
    if len(ts) < 2:
        raise ValueError("ts needs at least two times")
    return ts


def _full(t: float, x: Tensor) -> Tensor:
    """Per-row time (B,) filled with ``t``."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


@torch.no_grad()
def euler(net: Callable, x0: Tensor, cond: Tensor, ts: Sequence[float] | Tensor, *,
          guidance: float = 1.0, callback: Callback = None) -> Tensor:
    """Euler: ``x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k)``; 1 NFE per step (2 with CFG)."""
    ts, x = _times(ts), x0
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        x = x + (s - t) * guided_velocity(net, x, _full(t, x), cond, guidance)
        if callback is not None:
            callback({"i": i, "t": s, "x": x})
    return x


@torch.no_grad()
def heun(net: Callable, x0: Tensor, cond: Tensor, ts: Sequence[float] | Tensor, *,
         guidance: float = 1.0, callback: Callback = None) -> Tensor:
    """Heun (explicit trapezoid, 2nd order) on every interval; 2 NFE per step (4 with CFG).

    ``x' = x_k + dt v(x_k, t_k)``, ``x_{k+1} = x_k + dt/2 (v(x_k, t_k) + v(x', t_{k+1}))``.
    """
    ts, x = _times(ts), x0
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        # Euler predictor
        d = guided_velocity(net, x, _full(t, x), cond, guidance)
        x_pred = x + (s - t) * d
        # trapezoid corrector
        d_pred = guided_velocity(net, x_pred, _full(s, x), cond, guidance)
        x = x + (s - t) * 0.5 * (d + d_pred)
        if callback is not None:
            callback({"i": i, "t": s, "x": x})
    return x


@torch.no_grad()
def mean_flow(net: Callable, x0: Tensor, cond: Tensor, ts: Sequence[float] | Tensor, *,
              guidance: float = 1.0, callback: Callback = None) -> Tensor:
    """Few-step student sampler: ``x_{k+1} = x_k + (t_{k+1} - t_k) u(x_k, t_k, t_{k+1})``.

    ``u(x, t, s) = net(x, t, cond, h=s - t)`` is the average velocity over [t, s]
    (MeanFlow, arXiv 2505.13447, Eqs. 3 and 12, our direction s >= t). Exact if u is exact.
    """
    ts, x = _times(ts), x0
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        u = guided_velocity(net, x, _full(t, x), cond, guidance, h=_full(s - t, x))
        x = x + (s - t) * u
        if callback is not None:
            callback({"i": i, "t": s, "x": x})
    return x


@torch.no_grad()
def one_step(net: Callable, x0: Tensor, cond: Tensor, ts: Sequence[float] | Tensor, *,
             guidance: float = 1.0, callback: Callback = None) -> Tensor:
    """One-step student with the fidelity-realism knob: ``x = x0 + u(x0, ts[0], ts[-1])``.

    The displacement is NOT scaled by the interval: with ``ts = [0, t_knob]``, t_knob -> 0 gives
    ``x0 + v(x0, 0) = E[x1 | x0]`` (posterior-mean-like, high PSNR), t_knob = 1 the ODE endpoint
    ``x0 + 1 * u(x0, 0, 1)`` (realistic); in between it trades the two (OFTSR, arXiv 2412.09465).
    """
    ts = _times(ts)
    t, s = ts[0], ts[-1]
    x = x0 + guided_velocity(net, x0, _full(t, x0), cond, guidance, h=_full(s - t, x0))
    if callback is not None:
        callback({"i": 0, "t": s, "x": x})
    return x
