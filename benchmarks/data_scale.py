"""Training data in memory against streamed: steps/s and peak memory of the tiny teacher, and memory
as the folder grows ten times (the same images listed ten times, as symlinks).

    python benchmarks/data_scale.py [--data ../shared/data/train] [--steps 200] [--workers 4]
                                    [--json docs/scaling/data_scale.json]

Each run is `flowsr train --preset tiny-teacher` on the CPU in a subprocess (``OMP_NUM_THREADS`` as
given, else 1 thread for the training process). Memory is sampled every 0.1 s over the training
process and its DataLoader workers: ``peak_rss_mb`` is the largest single process (what
``/usr/bin/time -v`` reports), ``peak_total_pss_mb`` the whole tree with shared pages split between
the processes that share them. steps/s is the median of the logged rates after the first window.
The JSON records the command, machine and date; ``table`` is docs/scaling.md's table of it
(`python3 benchmarks/tables.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from flowsr.bench import machine
from flowsr.data import find_images


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of a process in kB; (0, 0) once it is gone."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                   if line.startswith("Pss:"))
        return rss, pss
    except (OSError, StopIteration, ValueError):
        return 0, 0


def run(data: Path, mode: str, steps: int, workers: int, out: Path) -> dict:
    command = [sys.executable, "-m", "flowsr", "train", "--preset", "tiny-teacher", "--out", str(out),
               f"data={data}", f"data_mode={mode}", f"num_workers={workers}", f"max_steps={steps}",
               "log_every=10", "val_images=0", f"ckpt_every={steps}", "device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    begin = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_rss = peak_pss = 0
    while process.poll() is None:
        sizes = [memory_kb(pid) for pid in tree(process.pid)]
        peak_rss = max(peak_rss, *(rss for rss, _ in sizes))
        peak_pss = max(peak_pss, sum(pss for _, pss in sizes))
        time.sleep(0.1)
    wall = time.perf_counter() - begin
    stdout = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"training failed ({process.returncode}): {' '.join(command)}")
    rates = [json.loads(line)["it_per_s"] for line in (out / "log.jsonl").read_text().splitlines()
             if '"it_per_s"' in line][1:]
    line = next((x for x in stdout.splitlines() if x.startswith("data: ")), "")
    return {"images": len(find_images(data)), "mode": mode,  # (the folder: the row's label; ×10 is temporary)
            "workers": workers if mode == "stream" else 0,
            "steps": steps, "steps_per_s": statistics.median(rates) if rates else None, "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak_rss / 1024, 1), "peak_total_pss_mb": round(peak_pss / 1024, 1), "log": line}


def table(data: dict) -> str:
    """The Markdown table of a --json file."""
    lines = ["| data | images | feeding | steps/s | peak RSS | total PSS |", "|---|---|---|---|---|---|"]
    for row in data["rows"]:
        feeding = "in memory" if row["mode"] == "memory" else f"streamed, {row['workers']} workers"
        lines.append(f"| {row['label']} | {row['images']} | {feeding} | {row['steps_per_s']:.2f} | "
                     f"{row['peak_rss_mb']:.0f} MB | {row['peak_total_pss_mb']:.0f} MB |")
    return "\n".join(lines) + (f"\n\n`{data['command']}`: {data['steps']} steps of `flowsr train --preset "
                               f"tiny-teacher` each, {data['machine']}, {data['date']}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/train")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    data = Path(args.data).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tenfold = Path(tmp) / "tenfold"  # every image ten times, as symlinks
        tenfold.mkdir()
        for index, path in enumerate(find_images(data)):
            for copy in range(10):
                (tenfold / f"{copy}_{index}{path.suffix}").symlink_to(path)
        rows = [{"label": label, **run(folder, mode, args.steps, args.workers, Path(tmp) / f"run{i}")}
                for i, (label, folder, mode) in enumerate([(f"`{args.data}`", data, "memory"),
                                                           (f"`{args.data}`", data, "stream"),
                                                           ("×10 (symlinks)", tenfold, "memory"),
                                                           ("×10 (symlinks)", tenfold, "stream")])]
    keys = ["images", "mode", "workers", "steps_per_s", "wall_s", "peak_rss_mb", "peak_total_pss_mb"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {"command": "python3 benchmarks/data_scale.py " + " ".join(sys.argv[1:]), "steps": args.steps,
                  "machine": machine(), "date": date.today().isoformat(), "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
