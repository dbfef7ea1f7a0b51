import math

import torch

from flowsr.flow import time_grid
from flowsr.samplers import CountingNet, euler, guided_velocity, heun, mean_flow, one_step

D = torch.float64


def _x(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 4, 4, generator=g, dtype=D), torch.randn(b, 3, 4, 4, generator=g, dtype=D)


def decay(x, t, cond, h=None):
    """dx/dt = -x."""
    return -x


def linear_in_t(a, b):
    """dx/dt = a + b t, exact flow x(t) = x(0) + a t + b t^2 / 2."""
    return lambda x, t, cond, h=None: a + b * t.view(-1, 1, 1, 1)


def exact_average_decay(c):
    """Exact average velocity of dx/dt = c x over [t, t+h]: x (e^{ch} - 1) / h (-> c x at h = 0)."""
    def u(x, t, cond, h=None):
        h = torch.zeros_like(t) if h is None else h
        hs = torch.where(h > 0, h, torch.ones_like(h))
        return x * torch.where(h > 0, torch.expm1(c * hs) / hs, torch.full_like(h, c)).view(-1, 1, 1, 1)
    return u


def test_euler_exact_on_constant_field():
    x0, a = _x()
    x = euler(lambda x, t, c, h=None: a, x0, x0, time_grid(3, t_end=0.7))
    assert torch.allclose(x, x0 + 0.7 * a)


def test_heun_exact_for_linear_in_t_euler_not():
    x0, a = _x()
    b = 2 * a.flip(0)
    exact = x0 + a + b / 2
    assert torch.allclose(heun(linear_in_t(a, b), x0, x0, time_grid(3)), exact, atol=1e-12)
    assert not torch.allclose(euler(linear_in_t(a, b), x0, x0, time_grid(3)), exact, atol=1e-3)


def test_convergence_orders_on_decay():
    x0, _ = _x()
    exact = x0 * math.exp(-1.0)

    def err(sampler, n):
        return (sampler(decay, x0, x0, time_grid(n)) - exact).abs().max().item()

    r_euler = err(euler, 16) / err(euler, 32)
    r_heun = err(heun, 16) / err(heun, 32)
    assert 1.8 < r_euler < 2.2, r_euler
    assert 3.6 < r_heun < 4.4, r_heun


def test_one_step_knob_formula():
    x0, cond = _x()

    def net(x, t, c, h=None):
        return 0.5 * x + c * (1 + h.view(-1, 1, 1, 1)) + t.view(-1, 1, 1, 1)

    for knob in (0.0, 0.3, 1.0):
        x = one_step(net, x0, cond, [0.0, knob])
        # displacement is u itself, not knob * u
        assert torch.allclose(x, x0 + 0.5 * x0 + cond * (1 + knob))


def test_mean_flow_exact_with_average_velocity_oracle():
    x0, cond = _x()
    for c in (-1.0, 0.7):
        for steps in (1, 4):
            x = mean_flow(exact_average_decay(c), x0, cond, time_grid(steps))
            assert torch.allclose(x, x0 * math.exp(c), atol=1e-12)
    # one step of one_step over [0, 1] is the same endpoint
    assert torch.allclose(one_step(exact_average_decay(0.7), x0, cond, [0.0, 1.0]), x0 * math.exp(0.7))


def test_guidance_nfe_and_value():
    x0, cond = _x()

    def field(x, t, c, h=None):  # conditional field c, null field 0
        return c

    for sampler, per_step in ((euler, 1), (heun, 2), (mean_flow, 1)):
        for w, calls in ((1.0, 1), (3.0, 2)):
            net = CountingNet(field)
            x = sampler(net, x0, cond, time_grid(5), guidance=w)
            assert net.nfe == 5 * per_step * calls
            assert torch.allclose(x, x0 + w * cond)
    net = CountingNet(field)
    one_step(net, x0, cond, [0.0, 1.0], guidance=2.0)
    assert net.nfe == 2


def test_guided_velocity_formula():
    x, cond = _x()

    def net(x, t, c, h=None):
        return x + 2 * c

    w = 1.5
    v = guided_velocity(net, x, torch.zeros(2, dtype=D), cond, guidance=w)
    assert torch.allclose(v, x + w * 2 * cond)


def test_callback_and_no_grad():
    x0, cond = _x()
    x0.requires_grad_(True)
    seen = []
    x = heun(decay, x0, cond, time_grid(3), callback=lambda d: seen.append((d["i"], d["t"])))
    assert not x.requires_grad
    assert [i for i, _ in seen] == [0, 1, 2] and abs(seen[-1][1] - 1.0) < 1e-12
