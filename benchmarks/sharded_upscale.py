"""Sharded upscale on one machine: `flowsr upscale` under torchrun with 1, 2, ... processes on the same LR folder,
images/s from each run's summary line.

    python3 benchmarks/sharded_upscale.py [--data ../shared/data/test/Set14/HR] [--model oftsr-x4]
                                          [--processes 1,2] [--json docs/scaling/sharded_upscale.json]

The LR inputs are made once with `flowsr degrade --scale 4` in a temporary folder. Every run is
`torchrun --nproc_per_node=N -m flowsr upscale LR -o OUT --model MODEL --device cpu` with the environment's
OMP_NUM_THREADS (upscale gives each process its share of the cores). Run it on an idle machine: the processes
share its cores. ``table`` is docs/scaling.md's table of the JSON (`python3 benchmarks/tables.py`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from flowsr.bench import machine

SUMMARY = re.compile(r"(?P<written>\d+) written.*\((?P<world>\d+) process(es)?, (?P<rate>[0-9.]+) images/s\)")


def upscale(lq: Path, out: Path, model: str, processes: int) -> dict:
    command = ["torchrun", f"--nproc_per_node={processes}", "-m", "flowsr", "upscale", str(lq), "-o", str(out),
               "--model", model, "--device", "cpu", "--quiet"]
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - begin
    match = next((m for line in done.stdout.splitlines() + done.stderr.splitlines() if (m := SUMMARY.search(line))),
                 None)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"upscale failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return {"processes": processes, "images": int(match["written"]), "images_per_s": float(match["rate"]),
            "wall_s": round(wall, 1)}


def table(data: dict) -> str:
    """The Markdown table of a --json file."""
    lines = ["| processes | images | images/s | wall s (with start-up) |", "|---|---|---|---|"]
    for row in data["rows"]:
        lines.append(f"| {row['processes']} | {row['images']} | {row['images_per_s']:.2f} | {row['wall_s']:.1f} |")
    return "\n".join(lines) + (f"\n\n`{data['command']}`: `{data['model']}` on the ×4 LR of `{data['data']}`, "
                               f"{data['machine']}, {data['date']}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/test/Set14/HR")
    parser.add_argument("--model", default="oftsr-x4")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lq = Path(tmp) / "lq"
        subprocess.run([sys.executable, "-m", "flowsr", "degrade", "-i", args.data, "-o", str(lq), "--scale", "4"],
                       check=True, capture_output=True)
        rows = [upscale(lq, Path(tmp) / f"out{n}", args.model, int(n)) for n in args.processes.split(",")]
    record = {"command": "python3 benchmarks/sharded_upscale.py " + " ".join(sys.argv[1:]), "data": args.data,
              "model": args.model, "machine": machine(), "date": date.today().isoformat(), "rows": rows}
    print(table(record))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
