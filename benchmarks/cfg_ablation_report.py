"""The CFG ablation's table (issue 24): every `flowsr eval` JSON of benchmarks/cfg_ablation_eval.sh, one Markdown
table per test set, and all rows in one JSON.

    python3 benchmarks/cfg_ablation_report.py RESULTS_DIR OUT_PREFIX [RUNS]   # writes OUT_PREFIX.json and .md

RESULTS_DIR holds <set>-teacher-w<W>.json (the teacher at guidance W) and <set>-<variant>.json (a MeanFlow student:
wX distilled with teacher CFG at X, mf-wX trained with MeanFlow's own CFG at effective scale X; see
benchmarks/cfg_ablation.sh). In each set's table the best student value of each column among the students at the
same step count is in bold (PSNR-Y, SSIM-Y, ref PSNR-Y: highest; LPIPS, DISTS: lowest; HF ratio: closest to 1);
the teacher rows are the ceilings and are not marked. With RUNS (the students' run directories), each student's
training record (recipe, steps, wall time, device) is tabulated too.

OUT_PREFIX.md is a page whose table sits between <!-- table:cfg-ablation --> markers: an existing page keeps its
text (the conclusions) and only the marked table is rewritten; a missing one is created around the table.
`python3 benchmarks/tables.py` regenerates the same table from the committed docs/cfg_ablation.json.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from marked import write_marked  # noqa: E402  (benchmarks/ is not a package)
from start_ab_report import COLUMNS, SET_ORDER, cell  # noqa: E402

# each column's score: the smallest wins
BEST = {"psnr_y": lambda v: -v, "ssim_y": lambda v: -v, "lpips": lambda v: v, "dists": lambda v: v,
        "hf_ratio": lambda v: abs(v - 1.0), "ref_psnr_y": lambda v: -v}
VARIANT = re.compile(r"(mf-)?w([0-9.]+)")


def variant_order(variant: str) -> tuple:
    """w1 < w1.5 < w2.5 < mf-w1.5 < anything else (by name)."""
    match = VARIANT.fullmatch(variant)
    return (bool(match.group(1)), float(match.group(2)), "") if match else (True, float("inf"), variant)


def recipe(variant: str) -> str:
    """What a variant name means, in words."""
    match = VARIANT.fullmatch(variant)
    if not match:
        return variant
    if match.group(1):
        return f"MeanFlow CFG, effective {match.group(2)}"
    return "no guidance" if float(match.group(2)) == 1.0 else f"teacher CFG w = {match.group(2)}"


def load_rows(results: Path) -> list[dict]:
    """Every row of every eval JSON in ``results`` (other JSON files skipped), tagged with its set, variant and
    role (teacher or student), ordered by set, role (students first), step count and variant."""
    rows = []
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "results" not in data:
            continue
        set_name, _, variant = path.stem.partition("-")
        for row in data["results"]:
            row = {k: v for k, v in row.items() if k != "per_image"}
            role = "teacher" if row.get("kind") == "flow" else "student"
            name = f"teacher-w{row['guidance']:g}" if role == "teacher" else variant
            rows.append({"set": set_name, "variant": name, "role": role, **row})
    sets = {name: index for index, name in enumerate(SET_ORDER)}
    return sorted(rows, key=lambda r: (sets.get(r["set"], len(sets)), r["set"], r["role"] == "teacher",
                                       r["guidance"] if r["role"] == "teacher" else 0, r["steps"],
                                       variant_order(r["variant"])))


def mark_best(rows: list[dict]) -> None:
    """Set ``best`` on every student row: the metric keys it is best in among the students of its set and steps."""
    for row in rows:
        row["best"] = []
    groups = {}
    for row in rows:
        if row["role"] == "student":
            groups.setdefault((row["set"], row["steps"]), []).append(row)
    for group in groups.values():
        for key, score in BEST.items():
            scored = [r for r in group if r["metrics"].get(key) is not None]
            best = min((score(r["metrics"][key]) for r in scored), default=None)
            for r in scored:
                if score(r["metrics"][key]) == best:
                    r["best"].append(key)


def markdown(rows: list[dict]) -> str:
    parts = []
    for set_name in dict.fromkeys(r["set"] for r in rows):
        subset = [r for r in rows if r["set"] == set_name]
        # guidance -> steps of the teacher output the students are scored against (ref PSNR-Y)
        reference = {r["reference"]["guidance"]: r["reference"]["steps"] for r in subset if "reference" in r}
        n = subset[0]["n_images"]
        parts.append(f"### {set_name} (x4, {n} image{'s' if n != 1 else ''})\n")
        parts.append("| variant | recipe | steps | " + " | ".join(c for c, _ in COLUMNS) + " |")
        parts.append("|---|---|---|" + "---|" * len(COLUMNS))
        for r in subset:
            what = recipe(r["variant"]) if r["role"] == "student" else f"teacher, w = {r['guidance']:g}" + (
                " (the reference)" if r["steps"] == reference.get(r["guidance"]) else "")
            cells = [f"**{cell(r, k)}**" if k in r["best"] else cell(r, k) for _, k in COLUMNS]
            parts.append(f"| {r['variant']} | {what} | {r['steps']} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def summary(rows: list[dict], steps: int = 1) -> str:
    """One row per student, one column per set: PSNR-Y / LPIPS / DISTS / HF ratio at ``steps`` steps (bold as in the
    full tables), then the teacher's 1-step output, where every student started."""
    sets = list(dict.fromkeys(r["set"] for r in rows))
    students = [r for r in rows if r["role"] == "student" and r["steps"] == steps]
    keys = ("psnr_y", "lpips", "dists", "hf_ratio")
    lines = ["| student | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]

    def cells(r: dict | None, marked: bool) -> str:
        if r is None:
            return "–"
        return " / ".join(f"**{cell(r, k)}**" if marked and k in r.get("best", []) else cell(r, k) for k in keys)

    for variant in sorted(dict.fromkeys(r["variant"] for r in students), key=variant_order):
        found = {r["set"]: r for r in students if r["variant"] == variant}
        lines.append(f"| `{variant}`, {recipe(variant)} | " + " | ".join(cells(found.get(s), True) for s in sets)
                     + " |")
    start = {r["set"]: r for r in rows if r["variant"] == "teacher-w1" and r["steps"] == 1}
    lines.append("| start of every student (= the teacher, 1 step) | "
                 + " | ".join(cells(start.get(s), False) for s in sets) + " |")
    return "\n".join(lines)


def training(runs: Path, variants: list[str]) -> list[dict]:
    """Each student's training record from ``runs/<variant>/`` (config.json, train_config.json), where present."""
    records = []
    for variant in variants:
        config, train_config = runs / variant / "config.json", runs / variant / "train_config.json"
        if not (config.exists() and train_config.exists()):
            continue
        done, cfg = json.loads(config.read_text()).get("training", {}), json.loads(train_config.read_text())
        records.append({"variant": variant, "mf_target": cfg["mf_target"], "guidance": cfg["guidance"],
                        "mf_omega": cfg["mf_omega"], "mf_kappa": cfg["mf_kappa"], "seed": cfg["seed"],
                        "teacher": cfg["teacher"], "init": cfg["init"], **{k: done.get(k) for k in (
                            "steps", "wall_seconds", "device")}})
    return records


def training_table(records: list[dict]) -> str:
    lines = ["| variant | target | guidance | omega | kappa | steps | wall s | device |", "|---" * 8 + "|"]
    for r in records:
        teacher_cfg = r["mf_target"] == "teacher"
        lines.append(f"| {r['variant']} | {r['mf_target']} | {format(r['guidance'], 'g') if teacher_cfg else '–'} | "
                     f"{'–' if teacher_cfg else format(r['mf_omega'], 'g')} | "
                     f"{'–' if teacher_cfg else format(r['mf_kappa'], 'g')} | {r['steps']} | {r['wall_seconds']} | "
                     f"{r['device']} |")
    return "\n".join(lines) + "\n"


def tables(data: dict) -> str:
    """The Markdown of a report's JSON (``{"rows", "training"}``): what was held equal, the training records and
    one table per set. A function of the JSON alone, so benchmarks/tables.py rewrites it from the committed file."""
    records, rows = data["training"], data["rows"]
    steps = {r["steps"] for r in records}
    budget = (f"the same {steps.pop()} training steps" if len(steps) == 1 else "equal wall time") if records else \
        "one budget each"
    reference = sorted({r["reference"]["steps"] for r in rows if "reference" in r})
    text = (f"MeanFlow students from one teacher, {budget} and seed (benchmarks/cfg_ablation.sh). Bold: the best "
            "student at that step count (HF ratio: closest to 1). ref PSNR-Y: against the teacher's "
            f"{'/'.join(map(str, reference)) or '–'}-step output at the scale the student distilled, from the same "
            "noise.\n\n")
    if records:
        text += "Training:\n\n" + training_table(records) + "\n"
    return text + markdown(rows)


def main(results: Path, prefix: Path, runs: Path | None = None) -> None:
    rows = load_rows(results)
    if not rows:
        raise SystemExit(f"{results}: no flowsr eval JSON (run benchmarks/cfg_ablation_eval.sh first)")
    mark_best(rows)
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["role"] == "student"))
    data = {"rows": rows, "training": training(runs, variants) if runs is not None else []}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    table = tables(data)
    write_marked(prefix.with_suffix(".md"), "cfg-ablation", table, "Teacher CFG distillation, measured")
    print(table)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) == 4 else None)
