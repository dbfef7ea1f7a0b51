from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr.ops import imresize, modcrop, rgb_to_y

SET5 = Path(__file__).parents[2] / "shared" / "data" / "test" / "Set5"
needs_set5 = pytest.mark.skipif(not SET5.is_dir(), reason=f"Set5 not found at {SET5}")
NAMES = ["baby", "bird", "butterfly", "head", "woman"]


def _load(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def _pair(name: str, s: int) -> tuple[np.ndarray, np.ndarray]:
    """(modcropped HR, reference LR) from Set5."""
    hr = modcrop(_load(SET5 / "HR" / f"{name}.png"), s)
    return hr, _load(SET5 / "LR_bicubic" / f"X{s}" / f"{name}x{s}.png")


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _round(x: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(x, 0, 255) + 0.5).astype(np.uint8)


@needs_set5
@pytest.mark.parametrize("s", [2, 3, 4])
def test_set5_bit_exact_numpy_and_torch_uint8(s):
    # MATLAB imresize on uint8 rounds after each axis; both paths must match every pixel
    for name in NAMES:
        hr, ref = _pair(name, s)
        np.testing.assert_array_equal(imresize(hr, 1 / s), ref)
        np.testing.assert_array_equal(imresize(_chw(hr), 1 / s).numpy().transpose(1, 2, 0), ref)


@needs_set5
def test_set5_x8_matches_single_final_rounding():
    # the distributed X8 set was made in float with one final rounding, not by MATLAB on uint8
    for name in NAMES:
        hr, ref = _pair(name, 8)
        np.testing.assert_array_equal(_round(imresize(hr.astype(np.float64), 1 / 8)), ref)


@needs_set5
@pytest.mark.parametrize("s", [2, 3, 4])
def test_set5_torch_float_rounded_equals_numpy_float(s):
    for name in NAMES:
        hr, _ = _pair(name, s)
        want = _round(imresize(hr.astype(np.float64), 1 / s))
        x = _chw(hr)
        got64 = _round(imresize(x.double(), 1 / s).numpy().transpose(1, 2, 0))
        np.testing.assert_array_equal(got64, want)
        got32 = _round(imresize(x.float(), 1 / s).numpy().transpose(1, 2, 0))
        off = np.abs(got32.astype(int) - want)
        assert off.max() <= 1 and (off > 0).mean() <= 1e-3


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 4, 0.6, 1.5])
def test_torch_matches_numpy_float(scale):
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 37, 48))
    want = np.stack([imresize(img.transpose(1, 2, 0), scale).transpose(2, 0, 1) for img in x])
    got = imresize(torch.from_numpy(x).float(), scale)
    assert got.dtype == torch.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    np.testing.assert_allclose(imresize(torch.from_numpy(x[0]), scale).numpy(), want[0], atol=1e-12)


def test_shapes_and_dtypes():
    img = np.zeros((31, 40, 3), np.uint8)
    assert imresize(img, 1 / 4).shape == (8, 10, 3)
    assert imresize(img, size=(20, 7)).shape == (20, 7, 3)
    assert imresize(img[..., 0], 2).shape == (62, 80)
    assert imresize(np.zeros((255, 9), np.float32), 1 / 3).dtype == np.float32
    assert imresize(np.zeros((255, 9)), 1 / 3).shape == (85, 3)
    assert imresize(torch.zeros(3, 31, 40), size=(20, 7)).shape == (3, 20, 7)
    with pytest.raises(ValueError):
        imresize(img)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 0.7, 2, 4])
def test_constant_image_is_preserved(scale):
    # weights of every output pixel sum to one, borders included
    img = np.full((17, 23, 3), 0.37)
    np.testing.assert_allclose(imresize(img, scale), 0.37, atol=1e-12)
    assert (imresize(np.full((17, 23), 200, np.uint8), scale) == 200).all()


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 1.5, 2, 4])
def test_linear_ramp_is_resampled_exactly(scale):
    # integer downscales and all upscales reproduce linear functions away from the borders
    n = 40
    ramp = np.tile(0.5 + 0.1 * np.arange(n, dtype=np.float64), (n, 1))  # varies along W
    out = imresize(ramp, scale)
    centres = (np.arange(out.shape[1]) + 0.5) / scale - 0.5  # output pixel centres in input pixels
    margin = 3 / min(scale, 1)
    inside = (centres > margin) & (centres < n - 1 - margin)
    np.testing.assert_allclose(
        out[:, inside], np.broadcast_to(0.5 + 0.1 * centres[inside], out[:, inside].shape)
    )


def test_modcrop():
    assert modcrop(np.zeros((31, 42, 3)), 4).shape == (28, 40, 3)
    assert modcrop(np.zeros((31, 42)), 3).shape == (30, 42)
    assert modcrop(torch.zeros(2, 3, 31, 42), 4).shape == (2, 3, 28, 40)


def test_rgb_to_y_range_and_torch_agrees():
    assert rgb_to_y(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.ones((1, 1, 3)))[0, 0] == pytest.approx(235.0)
    rng = np.random.default_rng(2)
    img = rng.random((5, 6, 3))
    y = rgb_to_y(img)
    assert y.shape == (5, 6)
    r, g, b = img[1, 2]
    np.testing.assert_allclose(y[1, 2], 16 + 65.481 * r + 128.553 * g + 24.966 * b)
    yt = rgb_to_y(torch.from_numpy(img.transpose(2, 0, 1))[None])
    np.testing.assert_allclose(yt[0].numpy(), y)
