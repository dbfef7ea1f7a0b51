"""Teacher recipe A/B at an equal budget (issue 14): network head x time sampler, same steps, same seed.

Each variant trains the tiny teacher for the same number of steps (equal compute: the networks are the
same size) and is scored on Set5 x4 (PSNR-Y / HF ratio at 1 and 8 Euler steps) together with the share
of the source noise that reaches the 1-step output:

    leak = |x_hat(eps_a) - x_hat(eps_b)| / |x0(eps_a) - x0(eps_b)|   (RMS over pixels, two seeds)

A correct 1-step Euler output of a rectified flow is E[x1 | x0]: nearly noise-free, leak << 1. A
velocity head that has not learnt to cancel the source noise passes it through (leak ~ 1).

    python benchmarks/teacher_ab.py --steps 1500 --out runs/teacher_ab   # CPU, one thread: ~5 min a variant

Writes OUT/teacher_ab.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flowsr.config import apply_overrides, preset
from flowsr.evaluate import evaluate, load_dataset
from flowsr.pipeline import Settings, load
from flowsr.train import train

VARIANTS = {  # name -> overrides of the tiny-teacher preset
    "velocity+logit_normal": ["net.prediction=velocity", "weighting=none", "time_sampler=logit_normal"],
    "velocity+uniform": ["net.prediction=velocity", "weighting=none", "time_sampler=uniform"],
    "endpoint+logit_normal": ["net.prediction=endpoint", "weighting=endpoint", "time_sampler=logit_normal"],
    "endpoint+mix": ["net.prediction=endpoint", "weighting=endpoint", "time_sampler=mix"],
    "endpoint+uniform": ["net.prediction=endpoint", "weighting=endpoint", "time_sampler=uniform"],
}


def noise_leak(model, dataset) -> float:
    """RMS of the 1-step output difference between two source-noise seeds over that of the sources."""
    ratios = []
    for sample in dataset.samples:
        lq = torch.from_numpy(sample.lq).permute(2, 0, 1)[None].float() / 255
        outputs = [model.upscale_tensor(lq, Settings(steps=1), seed=seed) for seed in (1, 2)]
        # the sources differ by sigma_p (eps_a - eps_b); in [0, 1] units that is sigma_p / 2 * sqrt(2) RMS
        source_rms = model.config.sigma_p / 2 * np.sqrt(2)
        ratios.append(float((outputs[0] - outputs[1]).square().mean().sqrt()) / source_rms)
    return float(np.mean(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every variant")
    parser.add_argument("--data", default="../shared/data/test/Set5/HR")
    parser.add_argument("--out", default="runs/teacher_ab")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    out = Path(args.out)
    dataset = load_dataset(args.data, 4)
    rows = []
    for name in args.variants.split(","):
        run = out / name
        cfg = apply_overrides(preset("tiny-teacher"), [*VARIANTS[name], f"max_steps={args.steps}", "val_images=0",
                                                       f"ckpt_every={args.steps}"])
        began = time.perf_counter()
        if not (run / "model.safetensors").exists():
            train(cfg, run)
        seconds = time.perf_counter() - began
        model = load(run, device="cpu")
        row = {"variant": name, "steps": args.steps, "train_seconds": round(seconds, 1),
               "noise_leak": noise_leak(model, dataset)}
        for n in (1, 8):
            result = evaluate(model, dataset, Settings(steps=n), ["psnr", "hf"])
            row[f"psnr_y_{n}"] = result["metrics"]["psnr_y"]
            row[f"hf_ratio_{n}"] = result["metrics"]["hf_ratio"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": dataset.name, "device": "cpu", "threads": torch.get_num_threads(), "rows": rows}
    (out / "teacher_ab.json").write_text(json.dumps(payload, indent=2) + "\n")
    keys = ["noise_leak", "psnr_y_1", "hf_ratio_1", "psnr_y_8", "hf_ratio_8"]
    print("| variant | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for row in rows:
        print(f"| {row['variant']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
