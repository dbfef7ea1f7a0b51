"""Invariants of the Real-ESRGAN degradation (flowsr.degradations)."""

import math
from dataclasses import fields, replace

import pytest
import torch

from flowsr import degradations as D

STAGES = ("blur1", "resize1", "noise1", "jpeg1", "blur2", "resize2", "noise2", "jpeg2", "final_sinc")


def natural_image(b=1, h=64, w=64, seed=0, noise=0.02):
    """Smooth colour gradient plus a sinusoidal texture and mild noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([x, y, 0.5 * (x + y)])
    texture = 0.15 * torch.sin(2 * math.pi * (6 * x + 3 * y)) * torch.cos(2 * math.pi * 5 * y)
    img = 0.15 + 0.6 * base + texture + noise * torch.randn(b, 3, h, w, generator=g)
    return img.clamp(0, 1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- full pipeline


def test_same_seed_same_output_different_seed_different():
    hr = natural_image(2, 64, 64)
    a = D.degrade(hr, generator=gen(3))
    b = D.degrade(hr, generator=gen(3))
    c = D.degrade(hr, generator=gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale", [2, 4])
def test_output_shape_range_and_quantisation(seed, scale):
    hr = natural_image(2, 48, 64, seed)
    lq = D.degrade(hr, scale=scale, generator=gen(seed))
    assert lq.shape == (2, 3, 48 // scale, 64 // scale)
    assert lq.dtype == hr.dtype
    assert lq.min() >= 0 and lq.max() <= 1
    assert torch.allclose(lq * 255, (lq * 255).round(), atol=1e-4)


def test_all_stages_off_is_rounding():
    hr = natural_image(2, 48, 48)
    cfg = D.RealESRGANConfig(**{s: False for s in STAGES})
    lq = D.degrade(hr, cfg, scale=1, generator=gen(0))
    assert torch.equal(lq, torch.clamp((hr * 255).round(), 0, 255) / 255)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_can_be_switched_off(stage):
    hr = natural_image(1, 48, 48)
    lq = D.degrade(hr, replace(D.RealESRGANConfig(), **{stage: False}), generator=gen(1))
    assert lq.shape == (1, 3, 12, 12) and lq.min() >= 0 and lq.max() <= 1


def test_scale_must_divide_size():
    with pytest.raises(ValueError):
        D.degrade(torch.rand(1, 3, 30, 32), scale=4)


# ---------------------------------------------------------------- config


def test_bundled_yaml_holds_every_field_with_the_defaults():
    import yaml

    assert set(yaml.safe_load(D.DEFAULT_YAML.read_text())) == {f.name for f in fields(D.RealESRGANConfig)}
    assert D.RealESRGANConfig.from_yaml(D.DEFAULT_YAML) == D.RealESRGANConfig()


def test_yaml_overrides_and_unknown_key(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("noise_range: [2, 10]\njpeg1: false\n")
    cfg = D.RealESRGANConfig.from_yaml(path)
    assert cfg.noise_range == (2, 10) and cfg.jpeg1 is False and cfg.sinc_prob == 0.1
    path.write_text("noise_range: [2, 10]\nnot_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):
        D.RealESRGANConfig.from_yaml(path)


def test_real_esrgan_defaults():
    cfg = D.RealESRGANConfig()
    assert cfg.resize_prob == (0.2, 0.7, 0.1) and cfg.resize_range == (0.15, 1.5)
    assert cfg.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert cfg.blur_sigma2 == (0.2, 1.5) and cfg.final_sinc_prob == 0.8 and cfg.second_blur_prob == 0.8
    with pytest.raises(ValueError):
        D.RealESRGANConfig(kernel_list=("box",))


# ---------------------------------------------------------------- kernels


def test_every_kernel_type_sums_to_one():
    n = 64
    g = gen(0)
    sx, sy = torch.rand(n, generator=g) * 2.8 + 0.2, torch.rand(n, generator=g) * 2.8 + 0.2
    theta, beta = torch.rand(n, generator=g) * 6.28 - 3.14, torch.rand(n, generator=g) * 3.5 + 0.5
    support = torch.tensor([7, 9, 11, 13, 15, 17, 19, 21]).repeat(n // 8)
    kernels = [
        D.gaussian_kernel(21, sx),
        D.gaussian_kernel(21, sx, sy, theta, support),
        D.generalized_gaussian_kernel(21, sx, sy, theta, beta, support),
        D.plateau_kernel(21, sx, sy, theta, beta, support),
        D.sinc_kernel(21, torch.rand(n, generator=g) * 2.5 + 0.6, support),
    ]
    for name in D.KERNEL_TYPES:
        kernels.append(D.random_mixed_kernel(n, (name,), (1.0,), generator=g))
    kernels.append(D.random_mixed_kernel(n, sinc_prob=0.5, generator=g))
    for k in kernels:
        assert k.shape == (n, 21, 21) and torch.isfinite(k).all()
        torch.testing.assert_close(k.sum((-2, -1)), torch.ones(n))


def test_kernel_support_and_symmetry():
    k = D.gaussian_kernel(21, 3.0, 1.0, 0.7, support=9)[0]
    assert k[:6].abs().sum() == 0 and k[:, -6:].abs().sum() == 0 and k[6:15, 6:15].min() > 0
    torch.testing.assert_close(k, k.flip(0, 1))  # point symmetric, so convolution == correlation


def test_isotropic_gaussian_matches_separable_formula():
    ax = torch.arange(-5.0, 6.0)
    g1 = torch.exp(-(ax**2) / (2 * 1.3**2))
    expected = torch.outer(g1, g1) / torch.outer(g1, g1).sum()
    torch.testing.assert_close(D.gaussian_kernel(11, 1.3)[0], expected)
    # a generalized Gaussian with beta = 1 is the Gaussian
    torch.testing.assert_close(D.generalized_gaussian_kernel(11, 1.3, beta=1.0)[0], expected)


def test_anisotropic_rotation_by_quarter_turn_transposes():
    a = D.gaussian_kernel(15, 3.0, 1.0, 0.0)[0]
    b = D.gaussian_kernel(15, 3.0, 1.0, math.pi / 2)[0]
    torch.testing.assert_close(a.T, b, atol=1e-6, rtol=1e-5)


def test_random_iso_kernel_with_fixed_sigma_is_a_truncated_gaussian():
    k = D.random_mixed_kernel(16, ("iso",), (1.0,), sigma_range=(1.5, 1.5), generator=gen(5))
    for kernel in k:
        support = int((kernel > 0).sum(0).max())
        torch.testing.assert_close(kernel, D.gaussian_kernel(21, 1.5, support=support)[0])


# ---------------------------------------------------------------- blur, noise, resize


def test_blur_with_delta_kernel_is_identity():
    img = natural_image(2, 32, 40)
    delta = torch.zeros(2, 21, 21)
    delta[:, 10, 10] = 1
    torch.testing.assert_close(D.blur(img, delta), img)


def test_blur_batched_equals_per_image():
    img = natural_image(3, 32, 32)
    k = D.random_mixed_kernel(3, generator=gen(1))
    batched = D.blur(img, k)
    single = torch.cat([D.blur(img[i : i + 1], k[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single)
    # a constant image stays constant (kernels sum to one, reflect padding)
    flat = torch.full((3, 3, 16, 16), 0.3)
    torch.testing.assert_close(D.blur(flat, k), flat)


def test_zero_noise_is_identity():
    img = natural_image(4, 32, 32)
    gray = torch.tensor([True, False, True, False])
    torch.testing.assert_close(D.add_gaussian_noise(img, 0.0, gray, gen(0)), img)
    torch.testing.assert_close(D.add_poisson_noise(img, 0.0, gray, gen(0)), img)


def test_gaussian_noise_level_and_grey_noise():
    img = torch.full((2, 3, 128, 128), 0.5)
    out = D.add_gaussian_noise(img, torch.tensor([10.0, 10.0]), torch.tensor([True, False]), gen(0))
    noise = out - img
    assert abs(noise.std().item() * 255 - 10) < 0.5
    torch.testing.assert_close(noise[0, 0], noise[0, 2])  # grey: one map for all channels
    assert not torch.allclose(noise[1, 0], noise[1, 2])


def test_poisson_noise_grows_with_scale():
    img = natural_image(1, 64, 64)
    err = [(D.add_poisson_noise(img, s, False, gen(0)) - img).abs().mean().item() for s in (0.5, 1.0, 3.0)]
    assert err[0] < err[1] < err[2]


def test_random_resize_keep_and_base_size():
    img = natural_image(2, 40, 40)
    assert torch.equal(D.random_resize(img, (0, 0, 1), (0.5, 1.5), generator=gen(0)), img)
    up = D.random_resize(img, (1, 0, 0), (0.5, 1.5), generator=gen(0))
    down = D.random_resize(img, (0, 1, 0), (0.5, 1.5), base_size=(20, 20), generator=gen(0))
    assert 40 <= up.shape[-1] <= 60 and 10 <= down.shape[-1] <= 20


# ---------------------------------------------------------------- JPEG


def test_jpeg_quality_100_is_close_to_identity():
    img = natural_image(2, 64, 64, noise=0.0)  # 4:2:0 chroma averages away per-pixel colour noise
    out = D.jpeg_compress(img, 100)
    assert out.shape == img.shape
    assert (out - img).abs().mean() < 2 / 255


def test_jpeg_error_decreases_with_quality():
    img = natural_image(1, 64, 64)
    err = [(D.jpeg_compress(img, q) - img).abs().mean().item() for q in (5, 20, 40, 60, 80, 95, 100)]
    assert all(a > b for a, b in zip(err, err[1:], strict=False)), err


def test_jpeg_quality_out_of_range_raises():
    img = natural_image(2, 16, 16)
    for bad in (0, 0.5, 101, torch.tensor([50.0, 120.0])):
        with pytest.raises(ValueError):
            D.jpeg_compress(img, bad)


def test_jpeg_batched_equals_per_image_and_odd_sizes():
    img = natural_image(3, 37, 50)
    q = torch.tensor([30.0, 60.0, 95.0])
    batched = D.jpeg_compress(img, q)
    single = torch.cat([D.jpeg_compress(img[i : i + 1], q[i]) for i in range(3)])
    assert batched.shape == img.shape
    torch.testing.assert_close(batched, single)
    assert batched.min() >= 0 and batched.max() <= 1


def test_jpeg_constant_block_is_preserved():
    flat = torch.full((1, 3, 16, 16), 128 / 255)
    torch.testing.assert_close(D.jpeg_compress(flat, 10), flat)


@pytest.mark.parametrize("quality", [20, 50, 90])
def test_jpeg_matches_libjpeg_through_pillow(quality):
    import io

    import numpy as np
    from PIL import Image

    pixels = (natural_image(1, 64, 64, noise=0.03)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, subsampling=2)  # 4:2:0
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    img, reference = (torch.tensor(a).permute(2, 0, 1)[None].float() / 255 for a in (pixels, decoded))
    ours = D.jpeg_compress(img, quality)
    assert (ours - reference).abs().mean() < 2 / 255
    assert abs((ours - img).abs().mean() - (reference - img).abs().mean()) < 0.5 / 255
