"""Throughput of the full Real-ESRGAN degradation (flowsr.degradations.degrade), in HR images per second.

    python3 benchmarks/bench_degradations.py [--batch 16] [--size 64,256] [--iters 10] [--json out.json]

Runs on CPU, and on CUDA when available (generator on the same device as the images). The JSON records the
command, date and machine; docs/real-world.md's table is generated from docs/real-world/degradations.json by
``python3 benchmarks/tables.py`` (:func:`table`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

try:
    from flowsr.bench import machine
    from flowsr.degradations import RealESRGANConfig, degrade
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from flowsr.bench import machine
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
    parser.add_argument("--size", default="256", help="HR side(s), comma-separated")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda skipped if unavailable")
    parser.add_argument("--json", default="", help="write the results to this JSON file")
    args = parser.parse_args()

    results = {"command": "python3 benchmarks/bench_degradations.py " + " ".join(sys.argv[1:]),
               "date": datetime.date.today().isoformat(),
               "machine": machine(),
               "torch": torch.__version__, "python": platform.python_version(), "runs": []}
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        for size in (int(side) for side in args.size.split(",")):
            run = bench(device, args.batch, size, args.iters)
            results["runs"].append(run)
            print(f"degrade {device:>4} ({run['device']}): batch {args.batch} x {size}^2 HR -> "
                  f"{run['images_per_s']:.1f} images/s ({run['seconds_per_batch'] * 1e3:.0f} ms/batch)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def table(results: dict) -> str:
    """The Markdown table of ``results`` (this script's JSON), with the line saying how it was measured."""
    lines = ["| device | HR side | batch | HR images/s | ms per batch |", "|---|---|---|---|---|"]
    lines += [f"| {r['device']} ({r['threads']} threads) | {r['size']} | {r['batch']} | {r['images_per_s']:.1f} | "
              f"{r['seconds_per_batch'] * 1e3:.1f} |" for r in results["runs"]]
    return "\n".join(lines) + (f"\n\n`{results['command']}` on {results['machine']}, torch {results['torch']}, "
                               f"{results['date']}; mean of {results['runs'][0]['iters']} batches after 2 warm-up "
                               "batches.")


if __name__ == "__main__":
    main()
