import pytest
import torch

from flowsr.nets import NetConfig, UNet, count_parameters

TINY = NetConfig(channels=32, channel_mult=(1, 2, 2), num_blocks=1, attention_levels=())
# two levels, attention at both (head dims 32 and 64) and in the middle block
ATTN = NetConfig(channels=32, channel_mult=(1, 2), num_blocks=1, attention_levels=(0, 1))


def _net(cfg: NetConfig, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(cfg).eval()


def _perturb(net: UNet, interval: bool = False, scale: float = 0.05, seed: int = 1) -> None:
    """Add noise to every weight outside (or, with interval=True, inside) the interval MLP."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("interval_mlp") == interval:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _inputs(b: int = 2, size: int = 16, dtype=torch.float32, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=gen).to(dtype)
    cond = torch.rand(b, 3, size, size, generator=gen).to(dtype) * 2 - 1
    t = torch.rand(b, generator=gen).to(dtype)
    return x, t, cond


def test_output_shape_and_scalar_time():
    net = _net(TINY)
    assert 5e5 < count_parameters(net) < 1.5e6
    x, t, cond = _inputs(b=3)
    with torch.no_grad():
        out = net(x, t, cond)
        assert out.shape == x.shape
        scalar = net(x, 0.3, cond)
        batched = net(x, torch.full((3,), 0.3), cond)
    assert torch.allclose(scalar, batched)


def test_h_none_equals_h_zero_and_interval_is_used():
    net = _net(TINY)
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(net(x, t, cond), net(x, t, cond, h=torch.zeros(2)))
        # a student initialised from a teacher reproduces it for every h
        assert torch.equal(net(x, t, cond), net(x, t, cond, h=0.5))
        _perturb(net, interval=False)
        assert torch.equal(net(x, t, cond), net(x, t, cond, h=0.0))
        _perturb(net, interval=True)
        assert not torch.allclose(net(x, t, cond), net(x, t, cond, h=0.5), atol=1e-4)


def test_condition_is_used():
    net = _net(TINY)
    x, t, cond = _inputs()
    with torch.no_grad():
        real = net(x, t, cond)
        null = net(x, t, torch.zeros_like(cond))
    assert not torch.allclose(real, null, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's own jvp decompositions
@pytest.mark.parametrize("cfg", [TINY, ATTN], ids=["tiny", "attention"])
def test_jvp_matches_finite_difference(cfg):
    net = _net(cfg).double()
    _perturb(net, interval=False, scale=0.1)
    _perturb(net, interval=True, scale=0.1)
    x, t, cond = _inputs(dtype=torch.float64)
    h = torch.full((2,), 0.25, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def f(x_, t_, h_):
        return net(x_, t_, cond, h_)

    eps = 1e-7  # d/dt sees sin(1000 t): larger steps leave O(eps^2 1e6) truncation error
    for th in (torch.zeros_like(h), -torch.ones_like(h)):  # d/dt at fixed h, and at fixed t + h
        tangents = (v, torch.ones_like(t), th)
        _, jvp = torch.func.jvp(f, (x, t, h), tangents)
        with torch.no_grad():
            plus = f(x + eps * v, t + eps, h + eps * th)
            minus = f(x - eps * v, t - eps, h - eps * th)
        fd = (plus - minus) / (2 * eps)
        scale = jvp.abs().max().item()
        assert scale > 1e-3
        torch.testing.assert_close(jvp, fd, rtol=1e-5, atol=1e-7 * scale)



def test_jvp_with_constant_weights_equals_torchs_rules_at_two_thirds_of_the_flops(monkeypatch):
    """The layers' own forward-mode rules (weights constant) give torch's tangents, and a JVP costs exactly
    two forwards' convolution and linear FLOPs (primal + tangent), not three (torch also applies the
    zero weight tangents)."""
    import torch.autograd.forward_ad as fwAD
    from torch.utils.flop_counter import FlopCounterMode

    from flowsr.nets import unet

    net = _net(TINY).double()
    _perturb(net, interval=False, scale=0.1)
    _perturb(net, interval=True, scale=0.1)
    x, t, cond = _inputs(dtype=torch.float64)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = torch.full((2,), 0.25, dtype=torch.float64)

    def jvp():
        with torch.no_grad(), fwAD.dual_level(), FlopCounterMode(display=False) as counter:
            t_dual = fwAD.make_dual(t, torch.ones_like(t))
            out = net(fwAD.make_dual(x, v), t_dual, cond, h=h - t_dual)
            return fwAD.unpack_dual(out).tangent, counter.get_total_flops()

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t, cond, h=h)
    forward_flops = counter.get_total_flops()
    ours, our_flops = jvp()
    monkeypatch.setattr(unet, "_input_tangent", lambda x, weight: None)  # torch's rules everywhere
    torchs, torch_flops = jvp()
    torch.testing.assert_close(ours, torchs, rtol=1e-10, atol=1e-10 * torchs.abs().max().item())
    assert our_flops == 2 * forward_flops
    assert torch_flops == 3 * forward_flops

def test_state_dict_round_trip_and_determinism():
    net = _net(ATTN)
    _perturb(net, interval=False)
    _perturb(net, interval=True)
    fresh = _net(ATTN, seed=123)
    fresh.load_state_dict(net.state_dict())
    x, t, cond = _inputs()
    with torch.no_grad():
        a = net(x, t, cond, h=0.3)
        assert torch.equal(a, net(x, t, cond, h=0.3))
        assert torch.equal(a, fresh(x, t, cond, h=0.3))


def test_channels_last_input_matches_contiguous():
    net = _net(ATTN)
    _perturb(net, interval=False)
    x, t, cond = _inputs()
    cl = torch.channels_last
    with torch.no_grad():
        ref = net(x, t, cond)
        out = net(x.to(memory_format=cl), t, cond.to(memory_format=cl))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bad_size_raises():
    net = _net(TINY)
    assert net.size_multiple == 4
    x, t, cond = _inputs(size=18)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(x, t, cond)


def test_endpoint_prediction_and_patch():
    """prediction="endpoint": v = (cond + F - x) / max(1 - t, 0.05); with F = 0 the velocity moves x to cond."""
    cfg = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=(), patch=2,
                    prediction="endpoint", linear_skip=True)
    net = _net(cfg)
    assert net.size_multiple == 4
    with torch.no_grad():
        net.out_conv.weight.zero_()
        net.out_conv.bias.zero_()
        x, _, cond = _inputs(size=8)
        t = torch.tensor([0.0, 0.5])
        expected = (cond - x) / torch.tensor([1.0, 0.5]).view(2, 1, 1, 1)
        assert torch.allclose(net(x, t, cond), expected, atol=1e-6)
        assert torch.allclose(net(x, torch.ones(2), cond), (cond - x) / 0.05, atol=1e-4)
    with pytest.raises(ValueError, match="prediction"):
        NetConfig(prediction="noise")
