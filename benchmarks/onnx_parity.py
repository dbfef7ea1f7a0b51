"""ONNX exports against torch on a test set: the parity table of docs/onnx.md.

    python benchmarks/onnx_parity.py --model oftsr-x4 meanflow-x4 teacher-x4 \
        --data ../shared/data/test/Set5/HR --out runs/onnx --json docs/onnx/parity.json

The JSON records the command, machine, date and each model's weights SHA-256; ``python3 benchmarks/tables.py``
writes the page's table from it (:func:`table`).

Exports each model to OUT/NAME-onnx (float32) and OUT/NAME-onnx-fp16 unless they exist, then for each
image of the set: one network call on that image's own input (its bicubic condition and seeded source
noise, t = 0, h = the model's knob), and the full default upscale as `flowsr eval` makes it (same seed).
Reports the largest network-output difference, the output difference in 8-bit levels, and PSNR/SSIM-Y.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowsr.bench import machine
from flowsr.catalog import model_path, weights_sha256
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
        rows.append({"model": reference.name, "sha256": weights_sha256(model_path(spec)), "backend": "torch float32",
                     "network_max_abs": 0.0, "levels_max": 0, "levels_mean": 0.0, **base["metrics"]})
        for dtype, suffix in (("float32", "onnx"), ("float16", "onnx-fp16")):
            directory = Path(args.out) / f"{Path(spec).name}-{suffix}"
            if not (directory / "model.onnx").is_file():
                export(spec, directory, dtype=dtype)
            candidate = load(directory, device="cpu")
            result = evaluate(candidate, dataset, Settings(), ["psnr", "ssim"], seed=args.seed, keep=names)
            levels = [np.abs(result["images"][n].astype(np.int16) - base["images"][n]) for n in names]
            rows.append({"model": reference.name, "sha256": rows[-1]["sha256"], "backend": f"onnxruntime {dtype}",
                         "network_max_abs": network_difference(reference, candidate, dataset, args.seed),
                         "levels_max": int(max(d.max() for d in levels)),
                         "levels_mean": float(np.mean([d.mean() for d in levels])), **result["metrics"]})
    data = {"dataset": dataset.name, "images": len(names), "seed": args.seed,
            "command": "python3 benchmarks/onnx_parity.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "date": datetime.date.today().isoformat(), "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    print(table(data))


def table(data: dict) -> str:
    """The Markdown parity table of ``data`` (this script's JSON), with the line saying how it was measured."""
    lines = ["| model | backend | one network call: max abs diff | output diff, 8-bit levels: max / mean "
             "| PSNR-Y (dB) | PSNR-Y − torch's | SSIM-Y |", "|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        torch_row = next(r for r in data["rows"] if r["model"] == row["model"])
        lines.append(f"| {row['model']} | {row['backend']} | {row['network_max_abs']:.2g} | "
                     f"{row['levels_max']} / {row['levels_mean']:.2g} | {row['psnr_y']:.2f} | "
                     f"{row['psnr_y'] - torch_row['psnr_y']:+.4f} | {row['ssim_y']:.4f} |".replace("| -", "| −"))
    return "\n".join(lines) + (f"\n\n{data['dataset']}, {data['images']} images, default settings, seed "
                               f"{data['seed']}; `{data['command']}` on {data['machine']}, {data['date']}.")


if __name__ == "__main__":
    main()
