"""The start A/B's table (issue 20): every `flowsr eval` JSON of benchmarks/start_ab_eval.sh, one Markdown
table per test set, and all rows in one JSON.

    python3 benchmarks/start_ab_report.py RESULTS_DIR OUT_PREFIX    # writes OUT_PREFIX.json and OUT_PREFIX.md

RESULTS_DIR holds <set>-starts.json and <set>-<variant>-<role>.json (role: teacher, oftsr, meanflow), variant
``<start>-s<sigma_p>`` (see benchmarks/start_ab.sh). The training record of each model (steps, wall time,
device) is read from its config.json beside the run when it is there. OUT_PREFIX.md keeps its text; only the table
between its <!-- table:start-ab --> markers is rewritten (`python3 benchmarks/tables.py` writes the same from the
committed docs/start_ab.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from marked import write_marked  # noqa: E402  (benchmarks/ is not a package)

COLUMNS = [("NFE", "nfe"), ("PSNR-Y", "psnr_y"), ("SSIM-Y", "ssim_y"), ("LPIPS", "lpips"), ("DISTS", "dists"),
           ("HF ratio", "hf_ratio"), ("ref PSNR-Y", "ref_psnr_y")]
SET_ORDER = ("Set5", "Set14", "BSD100")
DIGITS = {"psnr_y": 2, "ssim_y": 4, "lpips": 4, "dists": 4, "hf_ratio": 2, "ref_psnr_y": 2}


def load_rows(results: Path) -> list[dict]:
    """Every row of every eval JSON in ``results``, tagged with its set, variant and role."""
    rows = []
    for path in sorted(results.glob("*.json")):
        name = path.stem
        data = json.loads(path.read_text())
        if "results" not in data:
            continue
        set_name, _, rest = name.partition("-")
        variant, role = ("-", "alone") if rest == "starts" else rest.rsplit("-", 1)
        for row in data["results"]:
            row = {k: v for k, v in row.items() if k != "per_image"}
            rows.append({"set": set_name, "variant": variant, "role": role, **row})
    order = {name: index for index, name in enumerate(SET_ORDER)}
    return sorted(rows, key=lambda r: order.get(r["set"], len(order)))  # stable: files' order within a set


def setting(row: dict, none: str = "") -> str:
    """A row's sampling setting by its model kind: t for OFTSR, the step count for a teacher or MeanFlow, else
    ``none`` (a one-pass model)."""
    if row["kind"] == "oftsr":
        return f"t = {row['t']:g}"
    if row["kind"] in ("flow", "meanflow"):
        return f"{row['steps']} step{'s' if row['steps'] > 1 else ''}"
    return none


def cell(row: dict, key: str) -> str:
    value = row["nfe"] if key == "nfe" else row["metrics"].get(key)
    if value is None:
        return "–"
    return str(value) if key == "nfe" else f"{value:.{DIGITS[key]}f}"


def markdown(rows: list[dict]) -> str:
    parts = []
    for set_name in dict.fromkeys(r["set"] for r in rows):
        subset = [r for r in rows if r["set"] == set_name]
        n = subset[0]["n_images"]
        parts.append(f"### {set_name} (x4, {n} images)\n")
        parts.append("| start (sigma_p) | model | setting | " + " | ".join(c for c, _ in COLUMNS) + " |")
        parts.append("|---|---|---|" + "---|" * len(COLUMNS))
        for r in subset:
            label = r["model"] if r["role"] == "alone" else r["role"]
            parts.append(f"| {r['variant']} | {label} | {setting(r)} | "
                         + " | ".join(cell(r, k) for _, k in COLUMNS) + " |")
        parts.append("")
    return "\n".join(parts)


def summary(rows: list[dict]) -> str:
    """One line per set and variant: the start alone, the teacher at 1 step and at its best LPIPS, OFTSR at t = 0
    and at its best LPIPS, MeanFlow at 1 step and at its best LPIPS (PSNR-Y / LPIPS / DISTS each)."""

    def triple(r):
        return " / ".join(cell(r, k) for k in ("psnr_y", "lpips", "dists")) + (
            f" ({setting(r)})" if setting(r) else "")

    def best(subset):
        scored = [r for r in subset if r["metrics"].get("lpips") is not None]
        return min(scored, key=lambda r: r["metrics"]["lpips"]) if scored else None

    lines = ["| set | start (sigma_p) | start alone | teacher 1 step | teacher, best LPIPS | OFTSR t = 0 | "
             "OFTSR, best LPIPS | MeanFlow 1 step | MeanFlow, best LPIPS |", "|---" * 9 + "|"]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        alone = {r["model"]: r for r in rows if r["set"] == set_name and r["role"] == "alone"}
        for variant in dict.fromkeys(r["variant"] for r in rows if r["set"] == set_name and r["role"] != "alone"):
            mine = [r for r in rows if r["set"] == set_name and r["variant"] == variant]
            start = variant.rsplit("-s", 1)[0]
            role = {name: [r for r in mine if r["role"] == name] for name in ("teacher", "oftsr", "meanflow")}
            first = {name: next((r for r in group if (r.get("steps"), r.get("t")) in ((1, None), (1, 0.0), (1, 1.0))),
                                None) for name, group in role.items()}
            t0 = next((r for r in role["oftsr"] if r["t"] == 0.0), None)
            cells = [alone[start] if start in alone else None, first["teacher"], best(role["teacher"]), t0,
                     best(role["oftsr"]), first["meanflow"], best(role["meanflow"])]
            lines.append(f"| {set_name} | {variant} | " + " | ".join(triple(c) if c else "–" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def tables(data: dict) -> str:
    """The Markdown of a report's JSON (``{"rows"}``); benchmarks/tables.py rewrites it from the committed file."""
    rows = data["rows"]
    return "Each cell: PSNR-Y / LPIPS / DISTS (setting).\n\n" + summary(rows) + "\n" + markdown(rows)


def main(results: Path, prefix: Path) -> None:
    data = {"rows": load_rows(results)}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    table = tables(data)
    write_marked(prefix.with_suffix(".md"), "start-ab", table, "Start-network A/B, measured")
    print(table)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
