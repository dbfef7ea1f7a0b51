import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr.metrics import image_metrics, psnr, ssim, to_uint8
from flowsr.ops import imresize, modcrop

SET5 = Path(__file__).parents[2] / "shared" / "data" / "test" / "Set5"
NAMES = ["baby", "bird", "butterfly", "head", "woman"]


def _random_image(seed: int = 0, shape=(48, 40, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _noisy(img: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, img.shape)
    return np.clip(np.round(img + noise), 0, 255).astype(np.uint8)


@pytest.mark.skipif(not SET5.is_dir(), reason=f"Set5 not found at {SET5}")
def test_set5_bicubic_x4_published_numbers():
    # the protocol's bicubic x4 baseline on Set5: 28.42 dB / 0.8104
    scores = []
    for name in NAMES:
        hr = modcrop(np.array(Image.open(SET5 / "HR" / f"{name}.png").convert("RGB")), 4)
        lr = np.array(Image.open(SET5 / "LR_bicubic" / "X4" / f"{name}x4.png").convert("RGB"))
        scores.append(image_metrics(imresize(lr, 4), hr, crop_border=4))
    assert np.mean([s["psnr_y"] for s in scores]) == pytest.approx(28.42, abs=0.02)
    assert np.mean([s["ssim_y"] for s in scores]) == pytest.approx(0.8104, abs=0.002)


def test_psnr_hand_computed():
    gt = np.zeros((6, 5, 3), np.uint8)
    sr = gt + 1
    # RGB: MSE = 1
    assert psnr(sr, gt, y_channel=False) == pytest.approx(20 * math.log10(255))
    # Y: a one-level step in R, G and B moves Y by (65.481 + 128.553 + 24.966) / 255 = 219 / 255
    assert psnr(sr, gt) == pytest.approx(10 * math.log10(255**2 / (219 / 255) ** 2))
    # one RGB pixel off by 10 out of 30 values: MSE = 100 * 3 / 90
    sr = gt.copy()
    sr[2, 3] = 10
    assert psnr(sr, gt, y_channel=False) == pytest.approx(10 * math.log10(255**2 / (300 / 90)))


def test_psnr_identical_and_border_crop():
    img = _random_image()
    assert psnr(img, img) == math.inf
    other = img.copy()
    other[:2] = 0  # differences only inside a 2-pixel border
    assert psnr(other, img, crop_border=2) == math.inf
    assert psnr(other, img, crop_border=1) < 100


def test_ssim_identical_is_one_and_decreases_with_noise():
    img = _random_image(shape=(64, 64, 3))
    assert ssim(img, img) == pytest.approx(1.0)
    assert ssim(img, img, y_channel=False) == pytest.approx(1.0)
    scores = [ssim(_noisy(img, s), img) for s in (2, 8, 32)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_greyscale_is_replicated_to_rgb():
    grey = _random_image(shape=(40, 36))
    grey2 = _noisy(grey, 10)
    rgb, rgb2 = (np.repeat(g[..., None], 3, axis=2) for g in (grey, grey2))
    for fn in (psnr, ssim):
        for y in (True, False):
            want = fn(rgb2, rgb, crop_border=3, y_channel=y)
            assert fn(grey2, grey, crop_border=3, y_channel=y) == pytest.approx(want, abs=1e-12)
            assert fn(grey2[..., None], grey[..., None], crop_border=3, y_channel=y) == pytest.approx(
                want, abs=1e-12
            )


def test_to_uint8():
    x = np.array([[[0.0, 0.5, 1.0], [-0.2, 1.3, 0.1 / 255]]])
    out = to_uint8(x)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[[0, 128, 255], [0, 255, 0]]])
    np.testing.assert_array_equal(to_uint8(torch.from_numpy(x).permute(2, 0, 1)), out)


def test_image_metrics_keys_and_types():
    img = _random_image()
    m = image_metrics(_noisy(img, 5), img, crop_border=4)
    assert set(m) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    assert all(type(v) is float for v in m.values())
    assert m["psnr_y"] == pytest.approx(psnr(_noisy(img, 5), img, 4))
