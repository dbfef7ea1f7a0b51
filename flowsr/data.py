"""Training data: HR images held in memory, random crops with flips/rotations, on-the-fly degradation.

HR crops are drawn on the CPU from a dedicated ``torch.Generator`` (its state is checkpointed, so a
resumed run sees the same crops), then moved to the training device where the LR image is made
(MATLAB-style bicubic by default, or the Real-ESRGAN pipeline) and upsampled back to be the condition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowsr.io import IMAGE_EXTENSIONS, ImageReadError, read_image
from flowsr.ops import imresize


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: training folder does not exist")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_images(root: str | Path, min_size: int) -> list[torch.Tensor]:
    """Read every image under ``root`` as a uint8 (3,H,W) tensor; grey is replicated to RGB.

    Images smaller than ``min_size`` on either side, or unreadable, are skipped with a warning.
    """
    images, skipped = [], []
    for path in find_images(root):
        try:
            image = read_image(path)
        except ImageReadError as error:
            skipped.append(str(error))
            continue
        rgb = image.rgb.expand(3, -1, -1) if image.rgb.shape[0] == 1 else image.rgb
        if min(rgb.shape[-2:]) < min_size:
            skipped.append(f"{path}: smaller than the {min_size}px crop")
            continue
        images.append((rgb * 255).round().to(torch.uint8))
    for message in skipped:
        print(f"warning: skipped {message}")
    if not images:
        raise ValueError(f"{root}: no usable training images (need images of at least {min_size}px)")
    return images


class RandomCrops:
    """Endless random HR crops (B,3,crop,crop) uint8 with random flips and 90-degree rotations."""

    def __init__(self, images: list[torch.Tensor], crop: int, batch_size: int, seed: int):
        self.images, self.crop, self.batch_size = images, crop, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def next(self) -> torch.Tensor:
        crops = []
        for _ in range(self.batch_size):
            image = self.images[self._randint(len(self.images))]
            top = self._randint(image.shape[1] - self.crop + 1)
            left = self._randint(image.shape[2] - self.crop + 1)
            patch = image[:, top : top + self.crop, left : left + self.crop]
            if self._randint(2):
                patch = patch.flip(-1)
            crops.append(torch.rot90(patch, self._randint(4), dims=(1, 2)))
        return torch.stack(crops)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round a [0,1] image to 8-bit levels, as a saved LR file would be."""
    return (image.clamp(0, 1) * 255).round() / 255


def bicubic_pair(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HR (B,3,H,W) in [0,1] -> (lq (B,3,H/s,W/s), up(lq) (B,3,H,W)), both in [0,1], lq 8-bit rounded."""
    lq = quantize(imresize(hr, scale=1 / scale))
    return lq, imresize(lq, scale=scale).clamp(0, 1)


def make_batch(hr_uint8: torch.Tensor, scale: int, device: torch.device, degrade=None) -> dict:
    """Build a training batch ``{"gt", "cond"}`` in [-1,1] on ``device`` from uint8 HR crops.

    ``degrade``: optional callable HR [0,1] -> LR [0,1] (e.g. Real-ESRGAN); default MATLAB bicubic.
    """
    hr = hr_uint8.to(device, non_blocking=True).float() / 255
    lq = degrade(hr) if degrade is not None else bicubic_pair(hr, scale)[0]
    up = imresize(lq, size=hr.shape[-2:]).clamp(0, 1)
    return {"gt": hr * 2 - 1, "cond": up * 2 - 1}


def uint8_hwc(tensor: torch.Tensor) -> np.ndarray:
    """(3,H,W) float [0,1] tensor -> (H,W,3) uint8 array, rounded."""
    return (tensor.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
