"""Real-world SR: colour fixes, `flowsr degrade --kind realesrgan`, training on Real-ESRGAN degradations."""

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, make_image
from PIL import Image

from flowsr.checkpoint import load_model_dir
from flowsr.cli import main
from flowsr.colorfix import adain, color_fix, wavelet, wavelet_decomposition
from flowsr.config import apply_overrides, preset
from flowsr.degradations import DEFAULT_YAML
from flowsr.train import train


def smooth(b=2, h=96, w=96, seed=0, lo=0.25, hi=0.75):
    """Smooth random images (B, 3, h, w) in [lo, hi]: bilinear-upsampled 6x6 noise."""
    coarse = torch.rand(b, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    return lo + (hi - lo) * torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")


def checkerboard(h=96, w=96, amplitude=0.05):
    """A +-amplitude one-pixel checkerboard (1, 1, h, w): the highest spatial frequency."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (amplitude * (1 - 2 * ((yy + xx) % 2))).float()[None, None]


# -- colour fix ------------------------------------------------------------------------------------


def test_none_is_identity():
    sr, ref = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.equal(color_fix(sr, ref, "none"), sr)


def test_adain_gives_the_reference_statistics():
    sr = 0.2 + 0.3 * torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    ref = 0.3 + 0.4 * torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(2))
    out = color_fix(sr, ref, "adain")
    assert 0 < out.min() and out.max() < 1  # nothing clipped, so the statistics are exact
    for stat in (lambda x: x.mean(dim=(-2, -1)), lambda x: x.std(dim=(-2, -1), unbiased=False)):
        assert torch.allclose(stat(out), stat(ref), atol=1e-4)
    # the structure of sr is kept: per channel, out is an increasing affine map of sr
    assert torch.corrcoef(torch.stack([out[0, 0].flatten(), sr[0, 0].flatten()]))[0, 1] > 0.9999


def test_wavelet_keeps_high_frequencies_of_sr():
    ref = smooth()
    sr = ref + checkerboard()
    out = color_fix(sr, ref, "wavelet")
    inner = (..., slice(32, -32), slice(32, -32))  # 31 px from the border, replicate padding reaches
    assert torch.allclose(out[inner], sr[inner], atol=1e-5)
    assert (out - sr).abs().mean() < 0.01


def test_wavelet_removes_a_colour_shift():
    ref = smooth()
    shift = torch.tensor([0.1, -0.08, 0.05]).view(1, 3, 1, 1)
    out = wavelet(ref + shift, ref)
    assert torch.allclose(out.mean(dim=(-2, -1)), ref.mean(dim=(-2, -1)), atol=1e-5)
    assert torch.allclose(out, ref, atol=1e-5)
    # a shift plus details: the shift goes, the details stay
    out = wavelet(ref + shift + checkerboard(), ref)
    assert torch.allclose(out[..., 32:-32, 32:-32], (ref + checkerboard())[..., 32:-32, 32:-32], atol=1e-5)


def test_wavelet_low_band_of_an_impulse():
    x = torch.zeros(1, 1, 81, 81)
    x[..., 40, 40] = 1.0
    high, low = wavelet_decomposition(x, levels=5)
    assert torch.allclose(high + low, x) and torch.isclose(low.sum(), torch.tensor(1.0))
    # five binomial blurs with holes of 1, 2, 4, 8, 16 px reach 31 px from the centre
    rows, cols = torch.nonzero(low[0, 0] > 0, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (9, 71, 9, 71)
    assert torch.allclose(low, low.transpose(-1, -2)) and torch.allclose(low, low.flip(-1))


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_colour_fix_keeps_shape_and_range(method):
    g = torch.Generator().manual_seed(3)
    sr, ref = torch.rand(2, 3, 20, 28, generator=g), torch.rand(2, 3, 20, 28, generator=g) ** 3
    out = color_fix(sr * 1.5 - 0.2, ref, method)
    assert out.shape == sr.shape and out.dtype == sr.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_colour_fix_errors():
    sr = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="none, wavelet, adain"):
        color_fix(sr, sr, "histogram")
    with pytest.raises(ValueError, match="shape"):
        adain(sr, torch.rand(1, 3, 4, 4))


def test_adain_of_a_flat_image_is_finite():
    out = adain(torch.full((1, 3, 8, 8), 0.5), torch.rand(1, 3, 8, 8))
    assert torch.isfinite(out).all()


# -- flowsr degrade --kind realesrgan ---------------------------------------------------------------


@pytest.fixture
def hr_folder(tmp_path):
    """Two 64x64 RGB PNGs."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "hr"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(make_image(rng, 64, 64)).save(folder / f"im{index}.png")
    return folder


def degrade(hr_folder, out, *extra):
    code = main(["degrade", "-i", str(hr_folder), "-o", str(out), "--scale", "4", "--kind", "realesrgan",
                 *extra])
    return code, {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))} if out.exists() else {}


def test_degrade_realesrgan_cli(hr_folder, tmp_path):
    code, first = degrade(hr_folder, tmp_path / "a", "--seed", "7")
    assert code == 0 and sorted(first) == ["im0.png", "im1.png"]
    for name in first:
        with Image.open(tmp_path / "a" / name) as image:
            assert image.size == (16, 16) and image.mode == "RGB"
    assert degrade(hr_folder, tmp_path / "b", "--seed", "7") == (0, first)
    code, other = degrade(hr_folder, tmp_path / "c", "--seed", "8")
    assert code == 0 and all(other[name] != first[name] for name in first)
    # the bundled YAML holds the defaults, so it gives the same files
    assert degrade(hr_folder, tmp_path / "d", "--seed", "7", "--config", str(DEFAULT_YAML)) == (0, first)


def test_degrade_unknown_yaml_key_fails(hr_folder, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("noise_range: [1, 10]\nblurr_sigma: [0.2, 3.0]\n")
    code, written = degrade(hr_folder, tmp_path / "out", "--config", str(bad))
    assert code == 1 and not written
    assert "blurr_sigma" in capsys.readouterr().err


# -- training on Real-ESRGAN degradations ----------------------------------------------------------


def test_training_with_realesrgan_degradation(image_folder, tmp_path):
    cfg = apply_overrides(preset("tiny-teacher"), [*TINY_OVERRIDES, f"data={image_folder}", "max_steps=2",
                                                   "degradation=realesrgan"])
    out = train(cfg, tmp_path / "run")
    net, config = load_model_dir(out)
    assert config.training["steps"] == 2 and config.training["degradation"] == "realesrgan"
    x = torch.zeros(1, 3, 32, 32)
    assert torch.isfinite(net(x, torch.zeros(1), x)).all()


@pytest.mark.parametrize("name", ["teacher-x4-real", "oftsr-x4-real", "meanflow-x4-real", "tiny-teacher-real"])
def test_real_world_presets(name):
    cfg = preset(name)
    assert cfg.degradation == "realesrgan" and cfg.preset == name


def test_color_fix_option_in_upscale_and_eval(tmp_path, image_folder):
    import numpy as np
    from PIL import Image

    from flowsr.cli import main

    for method in ("wavelet", "adain"):
        assert main(["upscale", str(image_folder / "img0.png"), "-o", str(tmp_path / method), "--model", "bicubic",
                     "--color-fix", method]) == 0
        assert np.asarray(Image.open(tmp_path / method / "img0.png")).shape == (192, 256, 3)
    assert main(["eval", "--model", "bicubic", "--data", str(image_folder), "--color-fix", "adain"]) == 0
