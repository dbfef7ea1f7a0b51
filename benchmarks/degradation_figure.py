"""Figure of random Real-ESRGAN x4 degradations of one HR crop (flowsr.degradations.degrade).

    python benchmarks/degradation_figure.py [IMAGE] [--out docs/degradations.png] [--crop 192] [--seeds 5]

IMAGE defaults to the first image of ../shared/data/test/Set14/HR (Set5 if Set14 is absent). Panels: the
central crop of the HR image, then one degradation per seed 0, 1, ... (default configuration, each
LR image enlarged x4 with nearest neighbour to the crop size, so the pixels stay visible).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
try:
    from flowsr.degradations import RealESRGANConfig, degrade
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
    from flowsr.degradations import RealESRGANConfig, degrade

DATA = ROOT.parent / "shared" / "data" / "test"
SCALE = 4


def default_image() -> Path:
    """The first image of Set14/HR, else of Set5/HR."""
    for folder in (DATA / "Set14" / "HR", DATA / "Set5" / "HR"):
        images = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if images:
            return images[0]
    raise FileNotFoundError(f"no HR image under {DATA}; pass one as IMAGE")


def central_crop(path: Path, size: int) -> torch.Tensor:
    """(1, 3, size, size) float in [0, 1]: the central size x size square of the image (RGB)."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"{path}: {w}x{h} is smaller than the {size} px crop")
    top, left = (h - size) // 2, (w - size) // 2
    crop = rgb[top:top + size, left:left + size]
    return torch.from_numpy(crop.copy()).permute(2, 0, 1).float().div(255)[None]


def make_figure(image: Path, out: Path, crop: int = 192, seeds: int = 5) -> None:
    """Write the HR crop and ``seeds`` degradations (seeds 0 .. seeds-1) side by side to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hr = central_crop(image, crop - crop % SCALE)
    cfg = RealESRGANConfig()
    panels = [(f"HR crop ({image.name})", hr[0])]
    for seed in range(seeds):
        lr = degrade(hr, cfg, scale=SCALE, generator=torch.Generator().manual_seed(seed))[0]
        enlarged = lr.repeat_interleave(SCALE, -2).repeat_interleave(SCALE, -1)
        panels.append((f"seed {seed} (LR x{SCALE} nearest)", enlarged))

    side = hr.shape[-1] / 100  # one image pixel per figure pixel at dpi 100
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels), side + 0.3), dpi=100)
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.3 / (side + 0.3), wspace=0.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB) from {image}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=None, help="HR image (default: first of Set14/HR)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "degradations.png"))
    parser.add_argument("--crop", type=int, default=192, help="side of the central HR crop in pixels")
    parser.add_argument("--seeds", type=int, default=5, help="number of random degradations")
    args = parser.parse_args(argv)
    image = Path(args.image) if args.image else default_image()
    make_figure(image, Path(args.out), args.crop, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
