"""Loss curves of the two training paths (issue 21): each tiny objective trained N steps with ``fast=false`` (the
path before issue 21) and ``fast=true`` from the same seed, for two seeds: the distance between the two seeds of one
path is the run-to-run noise the two paths are compared against.

    python benchmarks/train_paths.py --out runs/train-paths       # tiny-teacher, -regression, -oftsr, -meanflow
    python benchmarks/train_paths.py --out runs/train-paths-pm --suffix -pm --jobs 2

The students (OFTSR, MeanFlow) distil the teacher trained here with ``fast=false`` and seed 0. Every run logs every
step (so the fast path syncs every step here: its speed is measured by ``flowsr bench --train``, not here).
Writes ``OUT/curves.json`` (every run's per-step losses; MeanFlow: its ``err``) and ``OUT/curves.md``: the mean
loss (± standard error) over each 50-step window, ``|fast - old|`` (mean over the seeds) next to
``|seed 1 - seed 0|`` (mean over the paths).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OBJECTIVES = {"teacher": "flow matching", "regression": "regression", "oftsr": "OFTSR",
              "meanflow": "MeanFlow (err: mean squared error to the target; the loss is adaptively weighted)"}
RUNS = [("old", 0), ("fast", 0), ("old", 1), ("fast", 1)]  # (path, seed)


def run(out: Path, preset: str, path: str, seed: int, steps: int, threads: int, extra: list[str]) -> list[float]:
    """Train ``preset`` into ``out`` (kept if already complete); its per-step losses (MeanFlow: its ``err``, the
    mean squared error; its loss, adaptively weighted, stays near 1)."""
    done = out / "log.jsonl"
    if not (out / "model.safetensors").exists():
        command = [sys.executable, "-m", "flowsr", "train", "--preset", preset, "--out", str(out),
                   f"max_steps={steps}", "log_every=1", f"ckpt_every={steps}", "val_images=0", f"seed={seed}",
                   f"fast={'true' if path == 'fast' else 'false'}", "time_limit=0", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(out.with_name(out.name + ".out"), "w") as log:
            subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    rows = [json.loads(line) for line in done.read_text().splitlines() if line.strip()]
    key = "err" if "meanflow" in preset else "loss"
    return [row[key] for row in rows if key in row]


def window(losses: list[float], end: int, width: int) -> tuple[float, float]:
    """Mean and standard error of the losses of steps ``end - width + 1 .. end``."""
    values = losses[end - width:end]
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=50, help="steps per table window")
    parser.add_argument("--suffix", default="", help="preset family: '' (tiny-teacher, ...) or -pm")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (threads each: 2 / jobs)")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    args, extra = parser.parse_known_args()
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    objectives = args.objectives.split(",")

    def name(objective, path, seed):
        return f"{objective}-{path}-s{seed}"

    def train(objective, path, seed):
        teacher = [f"teacher={args.out / name('teacher', 'old', 0)}"] if objective in ("oftsr", "meanflow") else []
        return run(args.out / name(objective, path, seed), f"tiny-{objective}{args.suffix}", path, seed, args.steps,
                   threads, [*teacher, *extra])

    curves = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        curves.update(zip([name("teacher", *r) for r in RUNS], pool.map(lambda r: train("teacher", *r), RUNS)))
        students = [(o, *r) for o in objectives if o != "teacher" for r in RUNS]
        curves.update(zip([name(*s) for s in students], pool.map(lambda s: train(*s), students)))
    payload = {"steps": args.steps, "suffix": args.suffix, "losses": curves}
    (args.out / "curves.json").write_text(json.dumps(payload) + "\n")

    lines = [f"# Loss curves, old path (fast=false) and fast path, tiny{args.suffix} presets, {args.steps} steps",
             "", f"Mean loss over each {args.width}-step window ending at the step (± standard error of the mean).", ""]
    header = ["step", *(f"{path}, seed {seed}" for path, seed in RUNS), "\\|fast − old\\|", "\\|seed 1 − seed 0\\|"]
    for objective in objectives:
        lines += [f"## {OBJECTIVES[objective]}", "", "| " + " | ".join(header) + " |", "|---:" * len(header) + "|"]
        gaps = []  # (|fast - old| averaged over the seeds, |seed 1 - seed 0| averaged over the paths) per window
        for end in range(args.width, args.steps + 1, args.width):
            means = [window(curves[name(objective, *r)], end, args.width) for r in RUNS]
            (old0, _), (fast0, _), (old1, _), (fast1, _) = means
            gaps.append(((abs(fast0 - old0) + abs(fast1 - old1)) / 2, (abs(old1 - old0) + abs(fast1 - fast0)) / 2))
            cells = [f"{mean:.4g} ± {error:.2g}" for mean, error in means] + [f"{gap:.2g}" for gap in gaps[-1]]
            lines.append(f"| {end} | " + " | ".join(cells) + " |")
        later = gaps[1:] or gaps
        lines += ["", f"Windows after the first: mean \\|fast − old\\| {statistics.fmean(g for g, _ in later):.2g}, "
                  f"mean \\|seed 1 − seed 0\\| {statistics.fmean(n for _, n in later):.2g}.", ""]
    (args.out / "curves.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
