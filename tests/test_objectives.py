import math
from functools import partial

import pytest
import torch
from torch import nn

from flowsr.objectives import dudt, flow_matching_loss, freeze, meanflow_loss, oftsr_loss, regression_loss
from flowsr.samplers import CountingNet, euler, mean_flow

D = torch.float64


def _batch(b=4, hw=8, dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 3, hw, hw, generator=g, dtype=dtype) * 2 - 1
    cond = (gt + 0.3 * torch.randn(b, 3, hw, hw, generator=g, dtype=dtype)).clamp(-1, 1)
    return {"gt": gt, "cond": cond}


def _col(v):
    return v.view(-1, 1, 1, 1)


class TinyNet(nn.Module):
    """Small conv velocity net using x, t, cond and h."""

    def __init__(self, width=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Conv2d(6, width, 3, padding=1)
        self.emb = nn.Linear(2, width)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x, t, cond, h=None):
        h = torch.zeros_like(t) if h is None else h
        e = self.emb(torch.stack([torch.sin(3 * t), h * (1 + t)], dim=1))[:, :, None, None]
        return self.out(torch.tanh(self.inp(torch.cat([x, cond], 1)) + e))


class Recorder:
    """Wraps a net and records the arguments of every call."""

    def __init__(self, net):
        self.net, self.calls = net, []

    def __call__(self, x, t, cond, h=None):
        self.calls.append({"x": x, "t": t, "cond": cond, "h": h})
        return self.net(x, t, cond, h=h)


def exact_average_linear(c):
    """Exact average velocity of dx/dt = c x over [t, t + h]: x (e^{ch} - 1) / h, c x at h = 0."""
    def u(x, t, cond, h=None):
        h = torch.zeros_like(t) if h is None else h
        hs = torch.where(h > 0, h, torch.ones_like(h))
        return x * _col(torch.where(h > 0, torch.expm1(c * hs) / hs, torch.full_like(h, c)))
    return u


def _adaptive(err, c=1e-3, p=1.0):
    return (err / (err.detach() + c) ** p).mean()


# ---------------------------------------------------------------- flow matching and regression

@pytest.mark.parametrize("loss,sampler", [("l2", "logit_normal"), ("l1", "uniform")])
def test_flow_matching_oracle_is_zero(loss, sampler):
    batch = _batch()
    x1 = batch["gt"]

    def oracle(x, t, cond, h=None):  # v = (x1 - x_t) / (1 - t) = x1 - x0 on the path
        return (x1 - x) / _col(1 - t)

    value, logs = flow_matching_loss(oracle, batch, loss=loss, time_sampler=sampler)
    tol = 1e-20 if loss == "l2" else 1e-12
    assert value.item() < tol and logs["loss"] < tol
    wrong, _ = flow_matching_loss(lambda x, t, c, h=None: torch.zeros_like(x), batch, loss=loss)
    assert wrong.item() > 1e-2


def test_flow_matching_condition_dropout():
    batch = _batch()
    for p, zeroed in ((1.0, True), (0.0, False)):
        rec = Recorder(lambda x, t, c, h=None: x)
        flow_matching_loss(rec, batch, p_drop=p)
        assert (rec.calls[0]["cond"] == 0).all() == zeroed
        if not zeroed:
            assert torch.equal(rec.calls[0]["cond"], batch["cond"])


def test_regression_oracle_is_zero():
    batch = _batch()
    rec = Recorder(lambda x, t, cond, h=None: batch["gt"] - cond)
    value, _ = regression_loss(rec, batch)
    assert value.item() < 1e-15
    assert torch.equal(rec.calls[0]["x"], batch["cond"]) and (rec.calls[0]["t"] == 0).all()


# ---------------------------------------------------------------- OFTSR

def test_oftsr_bootstrap_matches_exact_teacher_step():
    """v_T(x, t) = a + b t: RK2 is exact, the exact student u(x0, s) = a + b s / 2 gives zero
    bootstrap and boundary losses; a student ignoring the interval does not."""
    batch = _batch()
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(1, 3, 8, 8, generator=g, dtype=D) for _ in range(2))

    def teacher(x, t, cond, h=None):
        return a + b * _col(t)

    def student(x, t, cond, h=None):  # exact average velocity over [t, t + h]
        return a + b * _col(t + h / 2)

    value, logs = oftsr_loss(student, batch, teacher=teacher, w_align=0.01)
    assert logs["loss_bootstrap"] < 1e-25 and logs["loss_boundary"] < 1e-25
    assert logs["loss_align"] > 0 and math.isclose(value.item(), 0.01 * logs["loss_align"], rel_tol=1e-9)

    _, logs = oftsr_loss(lambda x, t, cond, h=None: a.expand_as(x), batch, teacher=teacher)
    assert logs["loss_bootstrap"] > 1e-4


def test_oftsr_clamped_interval_is_finite():
    """s' = s = s_max: the target is u(s) itself (no division by zero)."""
    student = TinyNet().double()
    _, logs = oftsr_loss(student, _batch(), teacher=TinyNet(seed=1).double(), s_min=0.5, s_max=0.5)
    assert logs["loss_bootstrap"] < 1e-25 and all(math.isfinite(v) for v in logs.values())


def test_oftsr_teacher_gets_no_gradient():
    student, teacher = TinyNet(), TinyNet(seed=1)  # teacher deliberately not frozen
    value, _ = oftsr_loss(student, _batch(dtype=torch.float32), teacher=teacher)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_student_ignoring_interval_starts_at_teacher_euler_step():
    """A student initialised from the teacher with a zero interval embedding (here: ignoring h)
    starts at the teacher's first Euler step, and its boundary loss vanishes as s_min -> 0."""
    teacher = freeze(TinyNet(seed=1).double())
    batch = _batch()
    student = lambda x, t, c, h=None: teacher(x, t, c)  # noqa: E731
    x0, s = batch["cond"], 0.05
    x_student = mean_flow(student, x0, batch["cond"], [0.0, s])
    assert torch.allclose(x_student, euler(teacher, x0, batch["cond"], [0.0, s]))
    bd = [oftsr_loss(student, batch, teacher=teacher, s_min=m)[1]["loss_boundary"] for m in (1e-2, 5e-3)]
    assert bd[0] < 1e-3 and 3.0 < bd[0] / bd[1] < 5.0  # mse = O(s_min^2)


# ---------------------------------------------------------------- MeanFlow

def test_meanflow_exact_average_velocity_is_zero_loss():
    batch = _batch()
    c = 0.8
    teacher = CountingNet(lambda x, t, cond, h=None: c * x)
    for p_equal in (0.0, 0.5):
        value, logs = meanflow_loss(exact_average_linear(c), batch, teacher=teacher, p_equal=p_equal)
        assert value.item() < 1e-8 and logs["err"] < 1e-20
    wrong, _ = meanflow_loss(lambda x, t, cond, h=None: c * x, batch, teacher=teacher, p_equal=0.0)
    assert wrong.item() > 1e-2


def test_dudt_equals_finite_difference():
    net = TinyNet().double()
    batch = _batch()
    x, cond = batch["gt"], batch["cond"]
    t = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=D)
    s = torch.tensor([0.4, 0.9, 0.5, 1.0], dtype=D)
    v = torch.randn_like(x)

    def u(eps):
        return net(x + eps * v, t + eps, cond, h=s - (t + eps))

    eps = 1e-6
    fd = (u(eps) - u(-eps)) / (2 * eps)
    got = dudt(net, x, t, s, cond, v)
    assert not got.requires_grad
    assert torch.allclose(got, fd, atol=1e-8)


def test_meanflow_equal_times_is_flow_matching_against_teacher():
    batch = _batch()
    teacher = TinyNet(seed=1).double()
    rec = Recorder(TinyNet().double())
    value, logs = meanflow_loss(rec, batch, teacher=teacher, p_equal=1.0)
    (call,) = rec.calls
    assert (call["h"] == 0).all() and logs["frac_interval"] == 0.0
    with torch.no_grad():
        v_T = teacher(call["x"], call["t"], batch["cond"])
    u = rec.net(call["x"], call["t"], call["cond"], h=call["h"])
    err = (u - v_T).square().flatten(1).sum(1)
    assert torch.allclose(value, _adaptive(err))


def test_meanflow_guided_teacher_calls():
    batch = _batch()
    for w, calls in ((1.0, 1), (2.5, 2)):
        teacher = CountingNet(TinyNet(seed=1).double())
        meanflow_loss(TinyNet().double(), batch, teacher=teacher, guidance=w)
        assert teacher.nfe == calls


def test_meanflow_conditional_target_and_cfg_mixing():
    batch = _batch()
    x1, cond = batch["gt"], batch["cond"]
    student = TinyNet().double()
    omega, kappa = 1.5, 0.3
    rec = Recorder(student)
    value, _ = meanflow_loss(rec, batch, target="conditional", omega=omega, kappa=kappa, p_equal=1.0,
                             p_drop=0.0)
    call = rec.calls[-1]
    x_t, t = call["x"], call["t"]
    x0 = (x_t - _col(t) * x1) / _col(1 - t)  # recover the source from the path point
    with torch.no_grad():
        zero = torch.zeros_like(t)
        v = (omega * (x1 - x0) + kappa * student(x_t, t, cond, h=zero)
             + (1 - omega - kappa) * student(x_t, t, torch.zeros_like(cond), h=zero))
    err = (student(x_t, t, cond, h=zero) - v).square().flatten(1).sum(1)
    assert torch.allclose(value, _adaptive(err))
    # omega = 1, kappa = 0: plain x1 - x0 target, dropped rows see zeros
    rec = Recorder(student)
    value, _ = meanflow_loss(rec, batch, target="conditional", p_equal=1.0, p_drop=1.0)
    call = rec.calls[-1]
    assert (call["cond"] == 0).all()
    x0 = (call["x"] - _col(call["t"]) * x1) / _col(1 - call["t"])
    err = (student(call["x"], call["t"], call["cond"], h=call["h"]) - (x1 - x0)).square().flatten(1).sum(1)
    assert torch.allclose(value, _adaptive(err))


class Wrapper(nn.Module):
    """DDP stand-in: forwards to .module and records batch sizes."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, []

    def forward(self, *args, **kwargs):
        self.calls.append(args[0].shape[0])
        return self.module(*args, **kwargs)


def test_meanflow_jvp_on_unwrapped_module_and_interval_rows_only():
    student = TinyNet().double()
    sizes = []
    student.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    net = Wrapper(student)
    batch = _batch(b=8)
    _, logs = meanflow_loss(net, batch, teacher=TinyNet(seed=1).double(), p_equal=0.75)
    assert net.calls == [8]  # the prediction only goes through the wrapper
    assert sizes == [2, 8] and logs["frac_interval"] == 0.25  # JVP on the 2 rows with s != t


def test_meanflow_teacher_gets_no_gradient_and_autocast():
    student, teacher = TinyNet(), TinyNet(seed=1)  # teacher deliberately not frozen
    batch = _batch(dtype=torch.float32)
    value, logs = meanflow_loss(student, batch, teacher=teacher, guidance=2.0, p_equal=0.5)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    # the JVP runs in float32 with autocast disabled inside a bf16 autocast region
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, logs = meanflow_loss(student, batch, teacher=teacher, p_equal=0.0)
    assert math.isfinite(value.item())


def test_meanflow_with_unet():
    from flowsr.nets import NetConfig, UNet

    net = UNet(NetConfig(channels=8, channel_mult=(1, 2), num_blocks=1, attention_levels=(1,))).double()
    teacher = freeze(UNet(NetConfig(channels=8, channel_mult=(1, 2), num_blocks=1,
                                    attention_levels=(1,))).double())
    batch = _batch(b=2)
    x, cond = batch["gt"], batch["cond"]
    t, s = torch.tensor([0.2, 0.6], dtype=D), torch.tensor([0.7, 0.9], dtype=D)
    v = torch.randn_like(x)
    for p in net.interval_mlp[-1].parameters():  # make the interval embedding matter
        nn.init.normal_(p, std=0.1)

    def u(eps):
        return net(x + eps * v, t + eps, cond, h=s - (t + eps))

    fd = (u(1e-6) - u(-1e-6)) / 2e-6
    assert torch.allclose(dudt(net, x, t, s, cond, v), fd, atol=1e-6)
    loss_fn = partial(meanflow_loss, teacher=teacher, p_equal=0.0)
    value, _ = loss_fn(net, batch)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("jvp_dtype", [torch.float32, torch.bfloat16])
def test_meanflow_cuda_autocast(jvp_dtype):
    from flowsr.nets import NetConfig, UNet

    cfg = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=(1,))
    net, teacher = UNet(cfg).cuda(), freeze(UNet(cfg).cuda())
    batch = {k: v.float().cuda().contiguous(memory_format=torch.channels_last) for k, v in _batch().items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        value, logs = meanflow_loss(net, batch, teacher=teacher, guidance=2.0, p_equal=0.5,
                                    jvp_dtype=jvp_dtype)
        fm, _ = oftsr_loss(net, batch, teacher=teacher)
    (value + fm).backward()
    assert math.isfinite(value.item()) and all(math.isfinite(v) for v in logs.values())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())


def test_flow_matching_endpoint_weighting_is_the_endpoint_error():
    """weighting="endpoint": (1-t)^2 |v - (x1 - x0)|^2 = |x1_hat - x1|^2 for v = (x1_hat - x_t) / (1 - t)."""
    torch.manual_seed(0)
    gt = torch.rand(4, 3, 8, 8) * 2 - 1
    cond = gt + 0.1
    guess = torch.rand(4, 3, 8, 8)
    seen = {}

    def endpoint_net(x, t, c, h=None):
        seen["t"] = t
        return (guess - x) / (1 - t).clamp(min=0.05).view(-1, 1, 1, 1)

    value, _ = flow_matching_loss(endpoint_net, {"gt": gt, "cond": cond}, p_drop=0.0, time_sampler="uniform",
                                  weighting="endpoint")
    assert bool((seen["t"] < 0.95).all())  # true for this seed: no clamping
    assert torch.allclose(value, (guess - gt).square().mean(), rtol=1e-5)
    unweighted, _ = flow_matching_loss(endpoint_net, {"gt": gt, "cond": cond}, p_drop=0.0, time_sampler="uniform")
    assert not torch.allclose(unweighted, (guess - gt).square().mean(), rtol=1e-3)
    with pytest.raises(ValueError, match="weighting"):
        flow_matching_loss(endpoint_net, {"gt": gt, "cond": cond}, weighting="snr")


# ---------------------------------------------------------------- MeanFlow recipe (issue 14)

def test_meanflow_times_train_the_sampler_pairs():
    from flowsr.objectives import SAMPLER_PAIRS, meanflow_times, near_sampler_pairs

    torch.manual_seed(0)
    t, s, n = meanflow_times(4000, p_equal=0.4, p_grid=0.5)
    assert (s >= t).all() and ((0 <= t) & (s <= 1)).all()
    assert abs(n / 4000 - 0.6) < 0.01 and (s[n:] == t[n:]).all() and (s[:n] > t[:n]).all()
    grid = {pair for group in SAMPLER_PAIRS.values() for pair in group}
    on_grid = [(a, b) in grid for a, b in zip(t[:n].tolist(), s[:n].tolist())]
    assert abs(sum(on_grid) / n - 0.5) < 0.03  # half the s != t rows on the pairs, exactly
    one_step = ((t[:n] == 0) & (s[:n] == 1)).float().mean().item()
    assert abs(one_step - 0.5 / 3) < 0.03  # a third of the grid rows on the 1-step pair (0, 1)
    shares = near_sampler_pairs(t, s)
    assert 0.6 * 0.5 / 3 <= shares["near_1step"].item() < 0.6 * 0.5 / 3 + 0.02
    assert shares["near_4step"].item() > 0.6 * 0.5 / 3 - 0.02


def test_meanflow_student_states_are_the_students_one_step_states():
    batch = _batch(b=6)
    teacher = TinyNet(seed=1).double()
    rec = Recorder(TinyNet().double())
    # Recorder has no .module: the no-grad state call and the prediction both go through it
    _, logs = meanflow_loss(rec, batch, teacher=teacher, p_equal=1.0, student_states=1.0)
    assert logs["frac_student_states"] == 1.0
    state_call, prediction = rec.calls
    assert (state_call["t"] == 0).all()  # u(x0, 0, t): the student's own one-step jump to t
    x0, h, t = state_call["x"], state_call["h"], prediction["t"]
    # the state rows come in a random order: match them to the prediction rows by their (distinct) times
    by_state, by_prediction = h.argsort(), t.argsort()
    assert torch.equal(h[by_state], t[by_prediction])
    u = rec.net(x0, torch.zeros_like(h), state_call["cond"], h=h)
    assert torch.allclose(prediction["x"][by_prediction], (x0 + _col(h) * u)[by_state])


def test_time_embedding_derivative_is_bounded_by_its_scale():
    from flowsr.nets import timestep_embedding

    t = torch.linspace(0, 1, 101, dtype=D, requires_grad=True)
    for scale in (1.0, 1000.0):
        emb = timestep_embedding(t, 32, scale=scale)
        (grad,) = torch.autograd.grad(emb.square().sum() / 2, t)  # sum_k e_k de_k/dt
        jac = torch.autograd.functional.jacobian(partial(timestep_embedding, dim=32, scale=scale), t.detach())
        slope = jac.diagonal(dim1=0, dim2=2).abs().amax()
        assert slope <= scale + 1e-9 and slope > 0.5 * scale
        assert grad.abs().max() < 1e-6  # cos^2 + sin^2 = 1 per frequency


def test_mix_time_sampler_covers_t_near_zero():
    from flowsr.objectives import _sample_t

    torch.manual_seed(0)
    like = torch.zeros(20000)
    share = {kind: (_sample_t(kind, like) < 0.05).float().mean().item() for kind in ("uniform", "logit_normal", "mix")}
    assert share["logit_normal"] < 0.01 < 0.02 < share["mix"] < 0.04 < share["uniform"]
