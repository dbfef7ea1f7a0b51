"""Training objectives, all ``loss_fn(net, batch) -> (loss, logs)``.

``batch = {"gt": x1, "cond": up(lq)}``, both (B, 3, H, W) in [-1, 1]. ``net(x, t, cond, h=None)``
returns a velocity; t=0 is the noisy LR side, t=1 the HR side; zeros in ``cond`` are the null
condition. A student's average velocity over [t, s] is ``u(x, t, s) = net(x, t, cond, h=s - t)``.
Hyper-parameters and frozen teachers are bound with ``functools.partial``, e.g.
``partial(meanflow_loss, teacher=freeze(teacher), guidance=2.0)``. Teachers are only called under
``torch.no_grad()``. ``logs`` maps names to scalars: detached 0-d tensors (on the batch's device) or
Python numbers; the training loop fetches them from the device only when it writes a log row, so a
step needs no host sync.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from .flow import expand_t, interpolate, sample_t_logit_normal, sample_t_uniform, source, target_velocity
from .samplers import guided_velocity


def freeze(teacher: nn.Module) -> nn.Module:
    """Put a teacher in eval mode with ``requires_grad=False`` on all parameters; returns it."""
    return teacher.eval().requires_grad_(False)


def _logs(**values: Tensor | float) -> dict[str, Tensor | float]:
    """Scalars for the log, tensors detached and left on their device (no sync)."""
    return {k: v.detach() if isinstance(v, Tensor) else v for k, v in values.items()}


def unwrap(net: Callable) -> Callable:
    """The plain module inside ``torch.compile`` and DDP wrappers (either or both; else ``net`` itself): the
    no-grad and forward-mode (JVP) calls of a loss run on it."""
    for wrapper_attribute in ("_orig_mod", "module"):  # torch.compile's, then DDP's
        net = getattr(net, wrapper_attribute, net)
    return net


def _drop_cond(cond: Tensor, p_drop: float) -> tuple[Tensor, Tensor]:
    """Zero each row's condition with probability ``p_drop`` (CFG training); returns (cond, keep)."""
    keep = torch.rand(cond.shape[0], device=cond.device) >= p_drop
    return cond * expand_t(keep, cond), keep


def _sample_t(kind: str, like: Tensor) -> Tensor:
    """Per-row times (B,) from the named sampler."""
    if kind == "logit_normal":
        return sample_t_logit_normal(like.shape[0], device=like.device, dtype=like.dtype)
    if kind == "uniform":
        return sample_t_uniform(like.shape[0], device=like.device, dtype=like.dtype)
    if kind == "mix":  # half the rows of each, so t ~ 0 is trained and mid-range t gets more rows
        t = torch.cat([sample_t_uniform(like.shape[0], device=like.device, dtype=like.dtype),
                       sample_t_logit_normal(like.shape[0], device=like.device, dtype=like.dtype)])
        return torch.where(torch.rand(like.shape[0], device=like.device) < 0.5, *t.chunk(2))
    raise ValueError(f"unknown time sampler {kind!r}; use 'uniform', 'logit_normal' or 'mix'")


def flow_matching_loss(net: Callable, batch: dict, *, sigma_p: float = 0.2, p_drop: float = 0.1,
                       loss: str = "l2", time_sampler: str = "uniform", weighting: str = "none"):
    """Conditional flow matching (Lipman et al. 2023, arXiv 2210.02747) from the noisy LR source.

    ``x0 = source(cond)``, ``x_t = (1-t) x0 + t x1``, ``L = E |v(x_t, t, c) - (x1 - x0)|^p``, p = 2
    (``"l2"``) or 1 (``"l1"``); the condition is zeroed per row with probability ``p_drop``.
    ``weighting="endpoint"`` multiplies each row's error by ``max(1-t, 0.05)^p``: for a network that
    predicts the endpoint (``v = (x1_hat - x_t) / (1-t)``) this is the error of ``x1_hat`` itself, so
    rows near t = 1 do not dominate.
    """
    if loss not in ("l1", "l2"):
        raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
    x1, cond = batch["gt"], batch["cond"]
    # source, time and point on the path
    x0 = source(cond, sigma_p)
    t = _sample_t(time_sampler, x1)
    x_t = interpolate(x0, x1, t)
    # velocity regression with condition dropout
    err = net(x_t, t, _drop_cond(cond, p_drop)[0]) - target_velocity(x0, x1)
    if weighting == "endpoint":
        err = err * expand_t((1 - t).clamp(min=0.05), err)
    elif weighting != "none":
        raise ValueError(f"weighting must be 'none' or 'endpoint', got {weighting!r}")
    value = err.square().mean() if loss == "l2" else err.abs().mean()
    return value, _logs(loss=value)


def regression_loss(net: Callable, batch: dict, *, t_fixed: float = 0.0):
    """Non-generative baseline: ``x_hat = cond + net(cond, t_fixed, cond)``, ``L = |x_hat - x1|_1``.

    The pipeline samples it the same way (one call, no noise).
    """
    x1, cond = batch["gt"], batch["cond"]
    t = torch.full((cond.shape[0],), t_fixed, device=cond.device, dtype=cond.dtype)
    value = (cond + net(cond, t, cond) - x1).abs().mean()
    return value, _logs(loss=value)


def _midpoint_velocity(teacher: Callable, x: Tensor, t0: Tensor, t1: Tensor, cond: Tensor) -> Tensor:
    """Mean velocity of one RK2 (midpoint) teacher step from ``x`` over [t0, t1], per row."""
    v0 = teacher(x, t0, cond).to(x.dtype)
    x_mid = x + expand_t(0.5 * (t1 - t0), x) * v0
    return teacher(x_mid, 0.5 * (t0 + t1), cond).to(x.dtype)


def oftsr_loss(net: Callable, batch: dict, *, teacher: Callable, sigma_p: float = 0.2,
               s_min: float = 0.01, s_max: float = 0.99, delta: float = 0.05,
               w_boundary: float = 0.1, w_align: float = 0.01):
    """One-step distillation by bootstrapping the student's own trajectory (OFTSR, arXiv 2412.09465).

    Student average velocity from the source over [0, s]: ``u(s) = net(x0, 0, cond, h=s)``, so the
    student's state is ``x_s = x0 + s u(s)``. With ``s ~ U[s_min, s_max]``,
    ``s' = min(s + delta, s_max)`` and ``v_T`` the mean velocity of one teacher RK2 (midpoint) step
    from ``sg(x_s)`` over [s, s']:

    * bootstrap   ``s' u(s') = s u(s) + (s' - s) v_T``  ->  ``|u(s') - sg(u(s) + (s'-s)/s' (v_T - u(s)))|^2``
    * boundary    ``u(s_min) ~ sg(v_T^{[0, s_min]}(x0))`` (one teacher RK2 step from x0)
    * alignment   ``(1 - s)^2 |u(s) - v_T|^2``

    ``L = bootstrap + w_boundary * boundary + w_align * alignment`` (all means over pixels and rows).
    ``batch["gt"]`` is not used: the teacher alone defines the target trajectory.
    """
    if not 0.0 < s_min <= s_max <= 1.0:
        raise ValueError("need 0 < s_min <= s_max <= 1")
    cond = batch["cond"]
    b = cond.shape[0]
    x0 = source(cond, sigma_p)
    # interval ends: s ~ U[s_min, s_max], s' = min(s + delta, s_max), boundary at s_min
    s = s_min + (s_max - s_min) * torch.rand(b, device=cond.device, dtype=cond.dtype)
    s_next = (s + delta).clamp(max=s_max)
    s_bd = torch.full_like(s, s_min)
    # student average velocities over [0, s], [0, s'], [0, s_min]: one batched forward
    hs = torch.cat([s, s_next, s_bd])
    u = net(x0.repeat(3, 1, 1, 1), torch.zeros_like(hs), cond.repeat(3, 1, 1, 1), h=hs)
    u_s, u_next, u_bd = u.to(x0.dtype).chunk(3)
    u_s_sg = u_s.detach()
    # one RK2 teacher step over [s, s'] from x_s and over [0, s_min] from x0 (batched, no grad)
    x_s = x0 + expand_t(s, x0) * u_s_sg
    with torch.no_grad():
        v_T, v_bd = _midpoint_velocity(
            teacher, torch.cat([x_s, x0]), torch.cat([s, torch.zeros_like(s)]),
            torch.cat([s_next, s_bd]), cond.repeat(2, 1, 1, 1)).chunk(2)
    # bootstrap target for the longer interval; (s' - s) / s' = 0 when s' is clamped to s
    target = u_s_sg + expand_t((s_next - s) / s_next, x0) * (v_T - u_s_sg)
    l_boot = (u_next - target).square().mean()
    l_bd = (u_bd - v_bd).square().mean()
    l_align = (expand_t((1 - s) ** 2, x0) * (u_s - v_T).square()).mean()
    value = l_boot + w_boundary * l_bd + w_align * l_align
    return value, _logs(loss=value, loss_bootstrap=l_boot, loss_boundary=l_bd, loss_align=l_align)


def dudt(module: Callable, x: Tensor, t: Tensor, s: Tensor, cond: Tensor, v: Tensor, *,
         jvp_dtype: torch.dtype = torch.float32) -> Tensor:
    """Total derivative ``d/dt u(x_t, t, s) = v . d_x u + d_t u`` at fixed s, by one forward-mode JVP.

    ``u(x, t, s) = module(x, t, cond, h=s - t)`` with tangents (v, 1, 0) (MeanFlow, arXiv 2505.13447,
    Eq. 8, our direction); ``h = s - t`` therefore carries tangent -1. Uses dual tensors
    (``torch.autograd.forward_ad``, the same JVP as ``torch.func.jvp`` with less per-op overhead) and
    builds no autograd graph. Runs with autocast disabled unless ``jvp_dtype`` is float16/bfloat16,
    in which case it runs under autocast to that dtype.
    """
    low = jvp_dtype in (torch.float16, torch.bfloat16)
    cast = (torch.autocast(x.device.type, dtype=jvp_dtype) if low
            else torch.autocast(x.device.type, enabled=False))
    with torch.no_grad(), cast, fwAD.dual_level():
        t_dual = fwAD.make_dual(t, torch.ones_like(t))
        out = module(fwAD.make_dual(x, v), t_dual, cond, h=s - t_dual)
        return fwAD.unpack_dual(out).tangent.to(x.dtype)


# The (t, s) pairs the samplers evaluate (flowsr.samplers.mean_flow on time_grid(k)), by step count k.
SAMPLER_PAIRS = {1: ((0.0, 1.0),), 2: ((0.0, 0.5), (0.5, 1.0)),
                 4: ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))}


def _stochastic_round(x: float) -> int:
    return int(math.floor(x + torch.rand(()).item()))


def meanflow_times(b: int, p_equal: float, p_grid: float, device=None, dtype=torch.float32):
    """Per-row times ``(t, s, n)`` with ``t <= s`` for the MeanFlow loss.

    The first ``n`` rows (``(1 - p_equal) b``, stochastically rounded) have ``s != t``: a share ``p_grid``
    of them sit exactly on the pairs the 1-, 2- and 4-step samplers use (``SAMPLER_PAIRS``, a third of
    those rows per step count: the step sizes the sampler uses are trained, as in shortcut models,
    Frans et al. 2024),
    the others are two sorted U[0, 1) draws. The remaining rows have ``s = t ~ U[0, 1)`` (flow matching).
    """
    n = min(b, _stochastic_round((1.0 - p_equal) * b))
    n_grid = min(n, _stochastic_round(p_grid * n))
    pairs = [pair for k, group in SAMPLER_PAIRS.items() for pair in group]
    weights = torch.tensor([1 / len(group) for group in SAMPLER_PAIRS.values() for _ in group])
    picks = torch.multinomial(weights, n_grid, replacement=True) if n_grid else torch.zeros(0, dtype=torch.long)
    chosen = torch.tensor(pairs, dtype=dtype)[picks]
    random_pairs = torch.rand(n - n_grid, 2, dtype=dtype).sort(dim=1).values
    t_equal = torch.rand(b - n, dtype=dtype)
    t = torch.cat([chosen[:, 0], random_pairs[:, 0], t_equal])
    s = torch.cat([chosen[:, 1], random_pairs[:, 1], t_equal])
    return t.to(device, non_blocking=True), s.to(device, non_blocking=True), n  # (no wait for the device)


def near_sampler_pairs(t: Tensor, s: Tensor, tol: float = 0.05) -> dict[str, Tensor]:
    """Share of rows within ``tol`` (in both t and s) of a k-step sampler pair, as ``near_{k}step``."""
    shares = {}
    for k, group in SAMPLER_PAIRS.items():
        near = torch.zeros_like(t, dtype=torch.bool)
        for a, c in group:
            near |= ((t - a).abs() <= tol) & ((s - c).abs() <= tol)
        shares[f"near_{k}step"] = near.float().mean()
    return shares


def meanflow_loss(net: Callable, batch: dict, *, teacher: Callable | None = None,
                  guidance: float = 1.0, target: str = "teacher", omega: float = 1.0,
                  kappa: float = 0.0, sigma_p: float = 0.2, p_equal: float = 0.4, p_grid: float = 0.5,
                  student_states: float = 0.0, adaptive_p: float = 1.0, adaptive_c: float = 1e-3,
                  p_drop: float = 0.1, jvp_dtype: torch.dtype = torch.float32):
    """MeanFlow loss in our direction s >= t (MeanFlow, arXiv 2505.13447; MFSR, arXiv 2603.20690).

    Identity (MeanFlow Eq. 6, reversed time): ``u(x_t, t, s) = v(x_t, t) + (s - t) d/dt u(x_t, t, s)``
    with ``d/dt u = v . d_x u + d_t u`` at fixed s (see ``dudt``). Loss (Eqs. 9-10 with MeanFlow's adaptive
    weighting, Sec. 4.3): per row ``e = sum_pixels |u_theta(x_t, t, s) - sg(v + (s - t) du/dt)|^2``,
    ``L = mean(e / sg(e + c)^p)``.

    Velocity ``v`` at ``x_t = (1-t) x0 + t x1``, ``x0 = source(cond)``:

    * ``target="teacher"`` (MFSR distillation): ``v = v_T(x_t,t,0) + w (v_T(x_t,t,c) - v_T(x_t,t,0))``
      from the frozen teacher (w = ``guidance``; w=1 one call). The student always sees the true
      condition (guidance is baked in); ``p_drop``, ``omega``, ``kappa`` are unused. With w != 1 the
      guided ODE leaves the interpolation path: ``student_states`` is the share of rows whose state is
      instead the student's own one-step state ``x0 + t sg(u_theta(x0, 0, t))``, the state its sampler
      visits at t (exact for an exact student).
    * ``target="conditional"`` (MeanFlow from scratch): ``v = x1 - x0``, mixed with the student's
      own guidance (MeanFlow Sec. 4.2 and its improved-CFG appendix):
      ``v~ = omega (x1 - x0) + kappa u_theta(x_t,t,t|c) + (1 - omega - kappa) u_theta(x_t,t,t|0)``
      (sg; effective guidance scale ``omega / (1 - kappa)``); the student's condition is dropped
      with probability ``p_drop`` and dropped rows use ``v = x1 - x0`` unmixed.

    Times from :func:`meanflow_times` (``p_equal``, ``p_grid``): the ``s != t`` rows come first, so the
    JVP runs on those rows only, with static shapes. The JVP and the mixing/teacher calls run without
    autograd on the plain module (:func:`unwrap`); the prediction is one ordinary forward through ``net``
    (DDP gradient sync). Logs include the share of rows near each sampler's pairs (``near_{k}step``).
    """
    x1, cond = batch["gt"], batch["cond"]
    b = x1.shape[0]
    module = unwrap(net)
    t, s, n = meanflow_times(b, p_equal, p_grid, device=x1.device, dtype=x1.dtype)
    # point on the path (or, for a share of rows, the student's own state at t)
    x0 = source(cond, sigma_p)
    x_t = interpolate(x0, x1, t)
    with torch.no_grad():
        m = _stochastic_round(student_states * b) if target == "teacher" else 0
        if m > 0:
            rows = torch.randperm(b, device=x1.device)[:m]
            u_0t = module(x0[rows], torch.zeros_like(t[rows]), cond[rows], h=t[rows]).to(x1.dtype)
            x_t = x_t.index_copy(0, rows, x0[rows] + expand_t(t[rows], x0) * u_0t)
        # instantaneous velocity v at (x_t, t) and the student's condition
        if target == "teacher":
            if teacher is None:
                raise ValueError('target="teacher" needs a teacher')
            c_in = cond
            v = guided_velocity(teacher, x_t, t, cond, guidance).to(x1.dtype)
        elif target == "conditional":
            c_in, keep = _drop_cond(cond, p_drop)
            v = target_velocity(x0, x1)
            if omega != 1.0 or kappa != 0.0:
                # MeanFlow CFG mixing with the student's own instantaneous velocities u(x_t, t, t)
                h0 = torch.zeros_like(t)
                u_c = module(x_t, t, cond, h=h0).to(v.dtype)
                u_u = module(x_t, t, torch.zeros_like(cond), h=h0).to(v.dtype)
                v_mix = omega * v + kappa * u_c + (1.0 - omega - kappa) * u_u
                v = torch.where(expand_t(keep, v).bool(), v_mix, v)
        else:
            raise ValueError(f"target must be 'teacher' or 'conditional', got {target!r}")
        # MeanFlow target sg(v + (s - t) du/dt); s = t rows need no JVP
        u_tgt = v
        if n > 0:
            d = dudt(module, x_t[:n], t[:n], s[:n], c_in[:n], v[:n], jvp_dtype=jvp_dtype)
            u_tgt = torch.cat([v[:n] + expand_t(s[:n] - t[:n], d) * d, v[n:]])
    # prediction: one ordinary forward through net; adaptive weight on the per-row sum of squares
    u = net(x_t, t, c_in, h=s - t).to(u_tgt.dtype)
    err = (u - u_tgt).square().flatten(1)
    err_sum = err.sum(1)
    value = (err_sum / (err_sum.detach() + adaptive_c).pow(adaptive_p)).mean()
    err = err.mean(1)
    return value, _logs(loss=value, err=err.mean(), err_equal=err[n:].mean() if n < b else 0.0,
                        err_interval=err[:n].mean() if n > 0 else 0.0, frac_interval=n / b,
                        frac_student_states=m / b, **near_sampler_pairs(t, s))
