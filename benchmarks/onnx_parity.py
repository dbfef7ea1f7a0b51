"""ONNX exports against torch on a test set: the parity table of the README's Deploy section.

    python benchmarks/onnx_parity.py --model oftsr-x4 meanflow-x4 teacher-x4 \
        --data ../shared/data/test/Set5/HR --out runs/onnx [--json runs/onnx/parity.json]

Exports each model to OUT/NAME-onnx (float32) and OUT/NAME-onnx-fp16 unless they exist, then for each
image of the set: one network call on that image's own input (its bicubic condition and seeded source
noise, t = 0, h = the model's knob), and the full default upscale as `flowsr eval` makes it (same seed).
Reports the largest network-output difference, the output difference in 8-bit levels, and PSNR/SSIM-Y.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowsr.evaluate import evaluate, load_dataset
from flowsr.onnx_export import export
from flowsr.ops import imresize
from flowsr.pipeline import Settings, image_seed, load


def network_difference(reference, candidate, dataset, seed: int) -> float:
    """Max abs difference of one network call over the set's images, on each image's real input."""
    worst = 0.0
    for sample in dataset.samples:
        lq = torch.from_numpy(sample.lq).permute(2, 0, 1)[None].float() / 255
        cond = imresize(lq, scale=reference.scale).clamp(0, 1) * 2 - 1
        m = reference.net.size_multiple
        height, width = cond.shape[-2:]
        cond = F.pad(cond, (0, -width % m, 0, -height % m), mode="reflect")
        noise = torch.randn(cond.shape, generator=torch.Generator().manual_seed(image_seed(seed, sample.name)))
        sigma = reference.config.sigma_p
        x0 = math.sqrt(1 - sigma**2) * cond + sigma * noise
        knob = reference.config.default_t if reference.config.kind in ("oftsr", "meanflow") else 0.0
        t, h = torch.zeros(1), torch.full((1,), knob)
        with torch.no_grad():
            worst = max(worst, float((candidate.net(x0, t, cond, h) - reference.net(x0, t, cond, h)).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="bundled names or model directories")
    parser.add_argument("--data", required=True, help="folder of HR images (synthetic x4 protocol)")
    parser.add_argument("--out", default="runs/onnx", help="where the exports are written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.data, 4)
    names = tuple(s.name for s in dataset.samples)
    rows = []
    for spec in args.model:
        reference = load(spec, device="cpu")
        base = evaluate(reference, dataset, Settings(), ["psnr", "ssim"], seed=args.seed, keep=names)
        rows.append({"model": reference.name, "backend": "torch float32", "network_max_abs": 0.0,
                     "levels_max": 0, "levels_mean": 0.0, **base["metrics"]})
        for dtype, suffix in (("float32", "onnx"), ("float16", "onnx-fp16")):
            directory = Path(args.out) / f"{Path(spec).name}-{suffix}"
            if not (directory / "model.onnx").is_file():
                export(spec, directory, dtype=dtype)
            candidate = load(directory, device="cpu")
            result = evaluate(candidate, dataset, Settings(), ["psnr", "ssim"], seed=args.seed, keep=names)
            levels = [np.abs(result["images"][n].astype(np.int16) - base["images"][n]) for n in names]
            rows.append({"model": reference.name, "backend": f"onnxruntime {dtype}",
                         "network_max_abs": network_difference(reference, candidate, dataset, args.seed),
                         "levels_max": int(max(d.max() for d in levels)),
                         "levels_mean": float(np.mean([d.mean() for d in levels])), **result["metrics"]})
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": dataset.name, "rows": rows}, indent=2) + "\n")
    print(f"{dataset.name}, {len(names)} images, default settings, seed {args.seed}\n")
    print("| model | backend | one network call: max abs diff | output diff, 8-bit levels: max / mean "
          "| PSNR-Y (dB) | PSNR-Y - torch's | SSIM-Y |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        torch_row = next(r for r in rows if r["model"] == row["model"])
        print(f"| {row['model']} | {row['backend']} | {row['network_max_abs']:.2g} | "
              f"{row['levels_max']} / {row['levels_mean']:.2g} | {row['psnr_y']:.2f} | "
              f"{row['psnr_y'] - torch_row['psnr_y']:+.4f} | {row['ssim_y']:.4f} |")


if __name__ == "__main__":
    main()
