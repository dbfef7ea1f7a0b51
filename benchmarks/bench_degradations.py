"""Throughput of the full Real-ESRGAN degradation (flowsr.degradations.degrade), in HR images per second.

    python benchmarks/bench_degradations.py [--batch 16] [--size 256] [--iters 10] [--json out.json]

Runs on CPU, and on CUDA when available (generator on the same device as the images).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

try:
    from flowsr.degradations import RealESRGANConfig, degrade
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from flowsr.degradations import RealESRGANConfig, degrade


def bench(device: str, batch: int, size: int, iters: int, warmup: int = 2) -> dict:
    """Mean images/s over ``iters`` batches after ``warmup`` batches; each batch draws new parameters."""
    generator = torch.Generator(device=device).manual_seed(0)
    hr = torch.rand(batch, 3, size, size, generator=generator, device=device)
    cfg = RealESRGANConfig()
    times = []
    for i in range(warmup + iters):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        degrade(hr, cfg, scale=4, generator=generator)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    return {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "batch": batch,
        "size": size,
        "iters": iters,
        "threads": torch.get_num_threads(),
        "seconds_per_batch": mean,
        "min_seconds_per_batch": min(times),
        "images_per_s": batch / mean,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda skipped if unavailable")
    parser.add_argument("--json", default="", help="write the results to this JSON file")
    args = parser.parse_args()

    results = {"torch": torch.__version__, "python": platform.python_version(), "runs": []}
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        run = bench(device, args.batch, args.size, args.iters)
        results["runs"].append(run)
        print(f"degrade {device:>4} ({run['device']}): batch {args.batch} x {args.size}^2 HR -> "
              f"{run['images_per_s']:.1f} images/s ({run['seconds_per_batch'] * 1e3:.0f} ms/batch)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
