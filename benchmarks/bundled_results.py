"""Measure the bundled models at their serving settings and merge the rows into docs/results/bundled.json.

    python3 benchmarks/bundled_results.py                                   # every bundled model + bicubic
    python3 benchmarks/bundled_results.py --models teacher-x4 oftsr-x4 meanflow-x4
    python3 benchmarks/bundled_results.py --sets RealSR                     # the real-world pairs only
    python3 benchmarks/bundled_results.py --sets Set5 --limit 2 --out /tmp/try.json   # a quick try
    python3 benchmarks/tables.py                                            # then the README's tables

Each model is scored by one ``python3 -m flowsr eval --data ../shared/data/test/SET/HR --scale 4 --metrics
psnr,ssim,lpips,dists,hf --model M ... --json ...`` per set (RealSR: ``--data ../shared/data/real/RealSR``, the
paired protocol: its real LR, no border crop), at the settings it serves: a flow teacher at
``--steps 1,4``, an OFTSR student at ``--t 0,0.5,1``, a MeanFlow student at ``--steps 1,2,4``, every one-step
model (bicubic, sr, regression) once. The rows (means only; ``per_image`` is dropped) go into the JSON with the
command, the machine and the SHA-256 of ``flowsr/weights/M/model.safetensors``; re-running some models or sets
replaces only those (model, set) entries. ``tests/test_tables.py`` fails when a recorded SHA-256 is not the
shipped file's, so a model whose weights change must be run again.

``../shared`` is the data and weights folder beside the repository (``data/test/{Set5,Set14,BSD100}/HR``,
``data/real/RealSR``); ``--data-root`` points elsewhere. Run it on an idle machine, or with ``OMP_NUM_THREADS=1
nice`` beside other work: the timings (``seconds_per_image``) are recorded but not shown in the README.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from flowsr.bench import machine
from flowsr.catalog import weights_sha256

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "flowsr" / "weights"
DEFAULT_OUT = ROOT / "docs" / "results" / "bundled.json"
SETS = ("Set5", "Set14", "BSD100", "RealSR")
FOLDERS = {"Set5": "test/Set5/HR", "Set14": "test/Set14/HR", "BSD100": "test/BSD100/HR", "RealSR": "real/RealSR"}
METRICS = "psnr,ssim,lpips,dists,hf"
SERVING = {"flow": ["--steps", "1,4"], "oftsr": ["--t", "0,0.5,1"], "meanflow": ["--steps", "1,2,4"]}


def bundled() -> dict[str, Path]:
    """The models shipped in this checkout's flowsr/weights: name -> directory."""
    return {p.name: p for p in sorted(WEIGHTS.iterdir()) if (p / "config.json").is_file()}


def kind_of(name: str) -> str:
    if name == "bicubic":
        return "bicubic"
    return json.loads((WEIGHTS / name / "config.json").read_text())["kind"]


def sha256(name: str) -> str | None:
    """SHA-256 of the shipped weights file; None for bicubic (no weights)."""
    return None if name == "bicubic" else weights_sha256(WEIGHTS / name)


def limited(folder: Path, set_name: str, limit: int, scratch: Path) -> Path:
    """A folder like ``folder`` (SET/HR, or a paired set's HR/ and LR/) holding links to its first ``limit`` images,
    named so that the set keeps its name."""
    paired = set_name == "RealSR"
    target = scratch / set_name / ("" if paired else "HR")
    for part in (("HR", "LR") if paired else ("",)):
        (target / part).mkdir(parents=True)
        for path in sorted(p for p in (folder / part).iterdir() if p.is_file())[:limit]:
            (target / part / path.name).symlink_to(path.resolve())
    return target


def run(name: str, set_name: str, data: Path, shown_data: str, extra: list[str], scratch: Path, limit: int) -> dict:
    """One `flowsr eval` of one model on one set; returns the JSON entry (rows without per_image)."""
    out = scratch / f"{name}-{set_name}.json"
    args = ["eval", "--data", str(data), "--scale", "4", "--metrics", METRICS, "--model", name,
            *SERVING.get(kind_of(name), []), "--json", str(out), "--quiet", *extra]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}  # this checkout's flowsr and weights
    print(f"== {name} on {set_name}", flush=True)
    subprocess.run([sys.executable, "-m", "flowsr", *args], cwd=ROOT, env=env, check=True)
    shown = ["python3", "-m", "flowsr", *args]
    shown[shown.index("--data") + 1] = shown_data
    shown[shown.index("--json") + 1] = f"{name}-{set_name}.json"
    rows = [{k: v for k, v in row.items() if k != "per_image"} for row in json.loads(out.read_text())["results"]]
    return {"model": name, "set": set_name, "sha256": sha256(name), "command": shlex.join(shown),
            "machine": machine(), "date": datetime.date.today().isoformat(), **({"limit": limit} if limit else {}),
            "rows": rows}


def merge(path: Path, entries: list[dict]) -> dict:
    """Replace the (model, set) entries of ``path`` that ``entries`` re-ran; keep the rest."""
    data = json.loads(path.read_text()) if path.exists() else {}
    done = {(e["model"], e["set"]) for e in entries}
    kept = [e for e in data.get("entries", []) if (e["model"], e["set"]) not in done]
    order = {name: i for i, name in enumerate(["bicubic", *bundled()])}
    sets = {name: i for i, name in enumerate(SETS)}
    merged = sorted(kept + entries, key=lambda e: (order.get(e["model"], len(order)), sets.get(e["set"], len(sets))))
    return {"about": "bundled models at their serving settings; written by benchmarks/bundled_results.py, "
                     "tables by benchmarks/tables.py", "metrics": METRICS, "entries": merged}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="bundled names and/or bicubic (default: all)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--limit", type=int, default=0, help="only the first N images of each set (a try; needs --out)")
    parser.add_argument("--data-root", default="../shared/data",
                        help="folder holding test/SET/HR and real/RealSR (relative: to the repository)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("eval_args", nargs="*", help="after --: more flowsr eval options, e.g. -- --device cuda")
    args = parser.parse_args(argv)
    names = args.models or ["bicubic", *bundled()]
    unknown = [n for n in names if n != "bicubic" and n not in bundled()]
    if unknown:
        parser.error(f"not bundled: {', '.join(unknown)} (bundled: bicubic, {', '.join(bundled())})")
    if args.limit and args.out.resolve() == DEFAULT_OUT:
        parser.error("--limit measures part of a set: give --out elsewhere, the committed JSON holds whole sets")
    entries = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for set_name in args.sets:
            shown = f"{args.data_root}/{FOLDERS[set_name]}"
            data = (ROOT / shown).resolve()
            if not data.is_dir():
                parser.error(f"{shown}: no such folder (../shared is the data folder beside the repository)")
            if args.limit:
                data = limited(data, set_name, args.limit, scratch / "limited")
            for name in names:
                entries.append(run(name, set_name, data, shown, args.eval_args, scratch, args.limit))
                args.out.parent.mkdir(parents=True, exist_ok=True)  # merged after each run: a crash keeps the rest
                args.out.write_text(json.dumps(merge(args.out, entries), indent=1) + "\n")
    print(f"wrote {args.out} ({len(entries)} model-set entries); now: python3 benchmarks/tables.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
