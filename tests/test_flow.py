import math

import pytest
import torch

from flowsr.flow import (
    interpolate,
    sample_t_logit_normal,
    sample_t_uniform,
    source,
    target_velocity,
    time_grid,
)


def _pair(b=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, 3, 8, 8, generator=g, dtype=dtype),
            torch.randn(b, 3, 8, 8, generator=g, dtype=dtype))


def test_interpolate_endpoints_and_midpoint():
    x0, x1 = _pair()
    b = x0.shape[0]
    assert torch.equal(interpolate(x0, x1, torch.zeros(b, dtype=x0.dtype)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(b, dtype=x0.dtype)), x1)
    assert torch.allclose(interpolate(x0, x1, 0.5), 0.5 * (x0 + x1))


def test_interpolate_per_row_times():
    x0, x1 = _pair()
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=x0.dtype)
    xt = interpolate(x0, x1, t)
    for i, ti in enumerate(t.tolist()):
        assert torch.allclose(xt[i], (1 - ti) * x0[i] + ti * x1[i])


def test_target_is_path_derivative():
    x0, x1 = _pair()
    t, eps = 0.3, 1e-6
    fd = (interpolate(x0, x1, t + eps) - interpolate(x0, x1, t - eps)) / (2 * eps)
    assert torch.allclose(target_velocity(x0, x1), fd, atol=1e-8)


def test_source():
    cond, _ = _pair()
    assert torch.equal(source(cond, sigma_p=0.0), cond)
    noise = torch.randn_like(cond)
    assert torch.allclose(source(cond, 0.6, noise=noise), 0.8 * cond + 0.6 * noise)
    # residual to the scaled condition is N(0, sigma_p^2)
    big = torch.zeros(64, 3, 32, 32)
    r = source(big, sigma_p=0.2)
    assert abs(r.mean().item()) < 5e-3 and abs(r.std().item() - 0.2) < 5e-3


def test_global_rng_and_generator():
    cond, _ = _pair()
    torch.manual_seed(1)
    a = source(cond)
    torch.manual_seed(1)
    assert torch.equal(a, source(cond))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_t_uniform(5, generator=g1), sample_t_uniform(5, generator=g2))


def test_time_samplers():
    torch.manual_seed(0)
    u = sample_t_uniform(10000)
    assert u.shape == (10000,) and u.min() >= 0 and u.max() < 1
    ln = sample_t_logit_normal(20000, mean=-0.4, std=1.0)
    assert ln.min() > 0 and ln.max() < 1
    assert abs(ln.median().item() - 1 / (1 + math.exp(0.4))) < 0.01
    assert sample_t_logit_normal(3, dtype=torch.float64).dtype == torch.float64


def test_time_grid():
    ts = time_grid(4)
    assert torch.allclose(ts, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    q = time_grid(4, t_end=0.5, kind="quadratic")
    assert q[0] == 0 and q[-1] == 0.5 and (q.diff() > 0).all() and q.diff()[0] < q.diff()[-1]
    with pytest.raises(ValueError):
        time_grid(4, kind="nope")
