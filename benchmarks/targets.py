"""Issue 14's targets T1-T5, checked on the JSON that `benchmarks/eval_models.sh` writes.

    python3 benchmarks/targets.py runs/eval Set5 [--json runs/eval/targets-Set5.json]

Prints one line per target (the numbers it compares and met / not met). Rows are found by model kind,
steps, t and guidance, so the model directories may have any names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# what each target asks (issue 14), as the tables name them
TARGETS = {
    "T1": "teacher 1 step within 0.3 dB PSNR-Y of the regression net (same wall time)",
    "T2": "teacher LPIPS and DISTS better at some N in {4, 8, 16} than at 1 step; HF ratio at 32 steps in [0.7, 1.3]",
    "T3": "ref PSNR-Y >= 33 dB for OFTSR t = 1 and MeanFlow 1 step; MeanFlow's rises 1 -> 2 -> 4 steps",
    "T4": "MeanFlow 2 or 4 steps better than 1 on LPIPS or DISTS, never worse than the teacher at the same NFE",
    "T5": "OFTSR PSNR-Y monotone in t; t = 0 within 0.3 dB of the teacher's 1 step; best LPIPS at 1 NFE <= the "
          "teacher's best + 0.01",
}


def rows_of(results: Path, name: str) -> list[dict]:
    return json.loads((results / f"eval-{name}.json").read_text())["results"]


def pick(rows, kind, steps=None, t=None, guidance=1.0):
    for row in rows:
        if row["kind"] != kind or (steps is not None and row["steps"] != steps):
            continue
        if t is not None and row.get("t") != t:
            continue
        if kind == "flow" and row.get("guidance") != guidance:
            continue
        return row
    return None


def metric(row, key):
    return None if row is None else row["metrics"].get(key)


def check(rows) -> list[dict]:
    out = []

    def target(name, text, ok):
        out.append({"target": name, "measured": text, "met": bool(ok)})

    reg, t1 = pick(rows, "regression"), pick(rows, "flow", 1)
    target("T1", f"teacher 1 step {metric(t1, 'psnr_y'):.2f} dB vs regression {metric(reg, 'psnr_y'):.2f}",
           metric(t1, "psnr_y") >= metric(reg, "psnr_y") - 0.3)

    teacher = {r["steps"]: r for r in rows if r["kind"] == "flow" and r.get("guidance") == 1.0}
    better = [n for n in (4, 8, 16) if n in teacher and metric(teacher[n], "lpips") < metric(t1, "lpips")
              and metric(teacher[n], "dists") < metric(t1, "dists")]
    sweep = ", ".join(f"{n}: {metric(r, 'lpips'):.4f}/{metric(r, 'dists'):.4f}" for n, r in sorted(teacher.items()))
    hf32 = metric(teacher.get(32), "hf_ratio")
    target("T2", f"teacher LPIPS/DISTS by steps {sweep}; better than 1 step at N in {better or 'none'}; "
           f"HF ratio at 32 steps {'not measured' if hf32 is None else round(hf32, 3)}",
           better and hf32 is not None and 0.7 <= hf32 <= 1.3)

    oftsr_t1 = pick(rows, "oftsr", 1, 1.0)
    mf = {n: pick(rows, "meanflow", n) for n in (1, 2, 4)}
    ref = {n: metric(r, "ref_psnr_y") for n, r in mf.items()}
    ref_oftsr = metric(oftsr_t1, "ref_psnr_y")
    shown = {n: "–" if v is None else f"{v:.2f}" for n, v in ref.items()}
    target("T3", f"ref_psnr_y: OFTSR t=1 {'–' if ref_oftsr is None else f'{ref_oftsr:.2f}'}; MeanFlow 1/2/4 steps "
           f"{shown[1]} / {shown[2]} / {shown[4]}",
           None not in (ref_oftsr, *ref.values()) and ref_oftsr >= 33 and ref[1] >= 33 and ref[1] < ref[2] < ref[4])

    few = [n for n in (2, 4) if mf[n] and (metric(mf[n], "lpips") < metric(mf[1], "lpips")
                                           or metric(mf[n], "dists") < metric(mf[1], "dists"))]
    same_nfe = {n: teacher.get(n) for n in (1, 2, 4)}
    never_worse = all(same_nfe[n] is None or (metric(mf[n], "lpips") <= metric(same_nfe[n], "lpips")
                                              and metric(mf[n], "dists") <= metric(same_nfe[n], "dists"))
                      for n in (1, 2, 4) if mf[n])
    pairs = "; ".join(f"{n} NFE: MeanFlow {metric(mf[n], 'lpips'):.4f}/{metric(mf[n], 'dists'):.4f} vs teacher "
                      f"{metric(same_nfe[n], 'lpips'):.4f}/{metric(same_nfe[n], 'dists'):.4f}"
                      for n in (1, 2, 4) if mf[n] and same_nfe[n])
    target("T4", f"LPIPS/DISTS {pairs}; few steps better than 1 at {few or 'none'}", few and never_worse)

    knob = sorted((r["t"], r) for r in rows if r["kind"] == "oftsr")
    psnrs = [metric(r, "psnr_y") for _, r in knob]
    monotone = all(a > b for a, b in zip(psnrs, psnrs[1:]))
    t0 = knob[0][1] if knob else None
    best_student = min(metric(r, "lpips") for _, r in knob) if knob else None
    best_teacher = min(metric(r, "lpips") for r in rows if r["kind"] == "flow")
    target("T5", f"OFTSR PSNR over t {[round(p, 2) for p in psnrs]} (monotone: {monotone}); t=0 "
           f"{metric(t0, 'psnr_y'):.2f} vs teacher 1 step {metric(t1, 'psnr_y'):.2f}; best LPIPS {best_student:.4f} "
           f"vs teacher's best {best_teacher:.4f}",
           monotone and abs(metric(t0, "psnr_y") - metric(t1, "psnr_y")) <= 0.3
           and best_student <= best_teacher + 0.01)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("dataset")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = check(rows_of(args.results, args.dataset))
    for row in out:
        print(f"{row['target']} {'met' if row['met'] else 'NOT met'}: {row['measured']}")
    if args.json:
        args.json.write_text(json.dumps({"dataset": args.dataset, "targets": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
