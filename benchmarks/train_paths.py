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
QUANTITY = {"teacher": "flow matching (loss)", "regression": "regression (L1 loss)", "oftsr": "OFTSR (loss)",
            "meanflow": "MeanFlow (err, its unweighted mean squared error)"}
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


def name(objective: str, path: str, seed: int) -> str:
    return f"{objective}-{path}-s{seed}"


def objectives_of(payload: dict) -> list[str]:
    return [o for o in OBJECTIVES if name(o, *RUNS[0]) in payload["losses"]]


def windows(payload: dict, objective: str, width: int) -> list[tuple[int, list[tuple[float, float]], float, float]]:
    """Per window of ``width`` steps: its last step, (mean, standard error) of each run of RUNS, |fast − old|
    averaged over the seeds and |seed 1 − seed 0| averaged over the paths."""
    out = []
    for end in range(width, payload["steps"] + 1, width):
        means = [window(payload["losses"][name(objective, *r)], end, width) for r in RUNS]
        (old0, _), (fast0, _), (old1, _), (fast1, _) = means
        out.append((end, means, (abs(fast0 - old0) + abs(fast1 - old1)) / 2,
                    (abs(old1 - old0) + abs(fast1 - fast0)) / 2))
    return out


def curves_markdown(payload: dict, width: int = 50) -> str:
    """Each objective's windows (what curves.md holds; benchmarks/tables.py rewrites it from curves.json)."""
    lines = [f"Mean loss over each {width}-step window ending at the step (± standard error of the mean).", ""]
    header = ["step", *(f"{path}, seed {seed}" for path, seed in RUNS), "\\|fast − old\\|", "\\|seed 1 − seed 0\\|"]
    for objective in objectives_of(payload):
        lines += [f"## {OBJECTIVES[objective]}", "", "| " + " | ".join(header) + " |", "|---:" * len(header) + "|"]
        rows = windows(payload, objective, width)
        for end, means, gap, noise in rows:
            cells = [f"{mean:.4g} ± {error:.2g}" for mean, error in means] + [f"{gap:.2g}", f"{noise:.2g}"]
            lines.append(f"| {end} | " + " | ".join(cells) + " |")
        later = rows[1:] or rows
        lines += ["", f"Windows after the first: mean \\|fast − old\\| {statistics.fmean(r[2] for r in later):.2g}, "
                  f"mean \\|seed 1 − seed 0\\| {statistics.fmean(r[3] for r in later):.2g}.", ""]
    return "\n".join(lines)


def summary(payload: dict, width: int = 50) -> str:
    """One row per objective: over the windows after the first, mean |fast − old| against mean |seed 1 − seed 0|,
    and the runs' mean standard error in the last window."""
    lines = ["| objective | \\|fast − old\\| | \\|seed 1 − seed 0\\| | window standard error at the last step |",
             "|---|---:|---:|---:|"]
    for objective in objectives_of(payload):
        rows = windows(payload, objective, width)
        later = rows[1:] or rows
        error = statistics.fmean(e for _, e in rows[-1][1])
        lines.append(f"| {QUANTITY[objective]} | {statistics.fmean(r[2] for r in later):.2g} | "
                     f"{statistics.fmean(r[3] for r in later):.2g} | {error:.2g} |")
    return "\n".join(lines)


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
    text = (f"# Loss curves, old path (fast=false) and fast path, tiny{args.suffix} presets, {args.steps} steps\n\n"
            f"<!-- table:train-paths-curves -->\n{curves_markdown(payload, args.width)}\n"
            "<!-- /table:train-paths-curves -->\n")
    (args.out / "curves.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
