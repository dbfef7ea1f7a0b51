"""The speed tables of docs/onnx.md, from the JSON that ``benchmarks/onnx_cpu.sh`` writes into its OUT folder
(run.json, bench.json, bench_ort.json, bench_fp16.json, memory_*.json; committed as docs/onnx/speed/).
``python3 benchmarks/tables.py`` writes both tables from that folder; run on its own, this prints them:

    python3 benchmarks/onnx_report.py runs/onnx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LEVELS = {"disable": "optimisation disabled",
          "basic": "basic (constant folding, redundant-node removal, simple fusions)",
          "extended": "extended (complex fusions, e.g. layer norm)",
          "all": "all (layout optimisations: NCHWc convolutions)"}


def _read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _backend(row: dict) -> str:
    if row["backend"] == "onnxruntime":
        dtype = "" if row.get("dtype", "float32") == "float32" else f", {row['dtype']} graph"
        return f"ONNX Runtime ({row['ort_optimization']}, {row['ort_execution']}{dtype})"
    return "torch eager" if row["compile"] == "none" else f"torch.compile ({row['compile']})"


def _memory(folder: Path, row: dict) -> str:
    """Peak RSS of the process that ran only this backend (memory_*.json), at the largest size."""
    for path in sorted(folder.glob("memory_*.json")):
        for other in _read(folder, path.name)["rows"]:
            if (other["backend"], other["compile"], other.get("dtype")) == (row["backend"], row["compile"],
                                                                             row.get("dtype")):
                return f"{other['peak_memory_mb']:.0f}"
    return "–"


def speed_table(folder: Path) -> str:
    """torch eager, torch.compile and ONNX Runtime side by side (bench.json), the float16 graph (bench_fp16.json),
    ms per output image and megapixels/s at each size, with each backend's peak RSS in a process of its own."""
    run = _read(folder, "run.json")
    rows = _read(folder, "bench.json")["rows"] + [r for r in _read(folder, "bench_fp16.json")["rows"]
                                                  if r.get("dtype") == "float16"]
    sizes = sorted({r["size"] for r in rows})
    eager = {r["size"]: r for r in rows if r["backend"] == "torch" and r["compile"] == "none"}
    variants = list(dict.fromkeys((r["model"], _backend(r)) for r in rows))
    body = []
    for model, backend in variants:
        cells = [model, backend]
        mine = {r["size"]: r for r in rows if (r["model"], _backend(r)) == (model, backend)}
        for size in sizes:
            r = mine.get(size)
            base = eager.get(size)
            speedup = f" ({base['latency_ms_median'] / r['latency_ms_median']:.2f}×)" if r and base and r is not base \
                else ""
            cells += [f"{r['latency_ms_median']:.1f}{speedup}" if r else "–",
                      f"{r['megapixels_per_s']:.2f}" if r else "–"]
        cells.append(_memory(folder, mine[sizes[-1]]) if sizes[-1] in mine else "–")
        body.append(cells)
    header = ["model", "backend"]
    for size in sizes:
        header += [f"{size}² latency (ms)", f"{size}² MP/s"]
    header.append(f"peak RSS at {sizes[-1]}² (MB, one backend per process)")
    ort = {r["size"]: r for r in rows if r["backend"] == "onnxruntime" and r.get("dtype", "float32") == "float32"}
    ratios = {size: eager[size]["latency_ms_median"] / ort[size]["latency_ms_median"] for size in sizes
              if size in eager and size in ort}
    aim = ("; ".join(f"{ratio:.2f}× at {size}²" for size, ratio in ratios.items())
           + (": **met**" if ratios and min(ratios.values()) >= 1.3 else ": **not met**"))
    return _markdown(header, body) + (
        f"\n\n`{run['command']}` on {run['machine']}, {run['date']}; `{run['model']}` weights SHA-256 "
        f"`{run['sha256'][:16]}…`; median of {run['repeat']} calls; (×): speed-up over torch eager at that size. "
        f"The aim, ONNX Runtime (float32, default settings) at least 1.3× faster than torch eager: {aim}.")


def settings_table(folder: Path) -> str:
    """What each ONNX Runtime session setting buys (bench_ort.json), at the largest size, against 1 thread with
    graph optimisation disabled."""
    rows = _read(folder, "bench_ort.json")["rows"]
    size = max(r["size"] for r in rows)
    rows = [r for r in rows if r["size"] == size]
    body = [[f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}, {LEVELS[r['ort_optimization']]}, "
             f"{r['ort_execution']}", f"{r['latency_ms_median']:.1f}", f"{r['speedup_vs_first']:.2f}"] for r in rows]
    return _markdown(["setting", f"{size}² latency (ms)", "speed-up"], body)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/onnx")
    print(speed_table(folder) + "\n\n" + settings_table(folder))
