"""Turn the JSON written by `flowsr eval` / `flowsr bench` into the README's tables and plots.

    python benchmarks/report_results.py RESULTS_DIR OUT_DIR [--plots-only]

RESULTS_DIR holds eval-<set>.json (sweeps), bench-*.json; OUT_DIR receives results.md and
tradeoff_<set>.png (and knob_<set>.png for an OFTSR t sweep); with --plots-only, the plots alone (for a page
whose tables benchmarks/tables.py writes). The machine is read from the JSON files.
"""

import json
import sys
from pathlib import Path

from flowsr import report
from flowsr.bench import format_rows


def main(results: Path, out: Path, plots_only: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for path in sorted(results.glob("eval-*.json")):
        data = json.loads(path.read_text())  # `flowsr eval --json`: {"dataset", "protocol", "results": [rows]}
        rows = data["results"] if "results" in data else [data]  # (archives from before that layout: one row)
        name = path.stem[len("eval-"):]
        device = rows[0]["device"]
        parts.append(f"#### {name} (x4, {rows[0]['protocol']} protocol, {rows[0]['n_images']} images; "
                     f"s/image on {device})\n\n{report.markdown_table(rows)}\n")
        if any("lpips" in r["metrics"] for r in rows):
            report.tradeoff_plot(rows, out / f"tradeoff_{name}.png", f"{name} x4")
        if report.knob_sweeps(rows):
            report.knob_plot(rows, out / f"knob_{name}.png", f"{name} x4")
    for path in sorted(results.glob("bench-*.json")):
        data = json.loads(path.read_text())
        rows = data["rows"]
        keys = [k for k in ("objective", "model", "steps", "nfe", "batch", "crop", "size", "latency_ms_median",
                            "latency_ms_p90", "megapixels_per_s", "peak_memory_mb", "achieved_tflops",
                            "fraction_of_matmul", "s_per_step", "steps_per_s", "vs_flow_matching")
                if any(k in r for r in rows)]
        table = format_rows(rows, keys).splitlines()
        cells = [line.split() for line in table]
        md = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        md += ["| " + " | ".join(c) + " |" for c in cells[1:]]
        parts.append(f"#### {path.stem} ({data.get('machine', '?')})\n\n" + "\n".join(md) + "\n")
    if plots_only:
        print(f"wrote the plots of {results} into {out}")
        return
    (out / "results.md").write_text("\n".join(parts))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and sys.argv[3] != "--plots-only"):
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), plots_only=len(sys.argv) == 4)
