"""Shared fixtures: tiny generated images and tiny configs, so tests run in seconds on a CPU."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY_OVERRIDES = [
    "net.channels=16", "net.channel_mult=1,2", "net.num_blocks=1", "net.attention_levels=",
    "crop=32", "batch_size=2", "warmup=2", "log_every=1", "val_images=0", "ckpt_every=3",
]


def make_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour image with some edges (uint8 HWC), like a tiny photo."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    planes = []
    for _ in range(3):
        a, b, c = rng.uniform(2, 12, 3)
        plane = np.sin(a * xx + rng.uniform(0, 6)) * np.cos(b * yy) + 0.3 * np.sign(np.sin(c * (xx + yy)))
        planes.append(plane)
    image = np.stack(planes, -1)
    image = (image - image.min()) / (np.ptp(image) + 1e-9)
    return (image * 255).round().astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Six small RGB PNGs (48-64 px) in a folder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(6):
        Image.fromarray(make_image(rng, 48 + 4 * index, 64)).save(folder / f"img{index}.png")
    return folder
