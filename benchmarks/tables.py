"""Regenerate every results table marked in README.md and docs/**/*.md from committed JSON.

    python3 benchmarks/tables.py            # rewrite the marked tables in place
    python3 benchmarks/tables.py --check    # exit 1 naming each table that differs from what would be written

A generated table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; NAME is one of TABLES
below, each a function of committed files only (docs/results/bundled.json from benchmarks/bundled_results.py,
the models' config.json, docs/cpu/**/*.json, docs/start_ab.json, docs/start_cpu_*.json, docs/start_teacher_gpu_long.json,
docs/cfg_ablation.json, docs/onnx/**/*.json, docs/real-world/*.json, docs/scaling/*.json). Tables outside markers
are historical records: they are not regenerated, and their pages say so. tests/test_tables.py runs ``--check``
and compares each bundled model's recorded SHA-256 with its shipped weights.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from flowsr import report
from flowsr.catalog import weights_sha256

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_degradations  # noqa: E402  (benchmarks/ is not a package)
import cfg_ablation_report  # noqa: E402
import data_scale  # noqa: E402
import onnx_parity  # noqa: E402
import onnx_report  # noqa: E402
import sharded_upscale  # noqa: E402
import start_ab_report  # noqa: E402
import targets  # noqa: E402
import train_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_JSON = ROOT / "docs" / "results" / "bundled.json"
WEIGHTS = ROOT / "flowsr" / "weights"
SETS = ("Set5", "Set14", "BSD100")  # the README's summary: the synthetic x4 sets
ALL_SETS = (*SETS, "RealSR")  # + the real-world pairs (paired protocol), in docs/evaluation.md
MARKER = re.compile(r"<!-- table:(?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- /table:(?P=name) -->", re.S)
KIND_ORDER = {"bicubic": 0, "regression": 1, "sr": 2, "flow": 3, "oftsr": 4, "meanflow": 5}
WHAT = {"bicubic": "bicubic interpolation", "regression": "regression baseline (L1)", "sr": "published SR network",
        "flow": "flow teacher", "oftsr": "OFTSR one-step student", "meanflow": "MeanFlow student"}
# published bicubic x4 PSNR-Y / SSIM-Y (the values SR papers cite), against which the protocol is checked
PUBLISHED_BICUBIC = {"Set5": "28.42 / 0.8104", "Set14": "26.09 / 0.7048", "BSD100": "25.96 / 0.6675"}

def docs_json(name: str) -> dict:
    """A committed JSON file under docs/, by its path there."""
    return json.loads((ROOT / "docs" / name).read_text())


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# -- the bundled models --------------------------------------------------------------------------------


def bundled_configs() -> dict[str, dict]:
    """name -> config.json of every model in flowsr/weights, bicubic first, then by kind."""
    configs = {"bicubic": {"kind": "bicubic"}}
    for path in sorted(WEIGHTS.iterdir()):
        if (path / "config.json").is_file():
            configs[path.name] = json.loads((path / "config.json").read_text())
    return dict(sorted(configs.items(), key=lambda item: (KIND_ORDER.get(item[1]["kind"], 9), item[0])))


def default_model(configs: dict) -> str:
    return next((n for n in ("oftsr-x4", "meanflow-x4") if n in configs), "bicubic")  # as flowsr.catalog


def params(name: str) -> str:
    if name == "bicubic":
        return "0"
    with open(WEIGHTS / name / "model.safetensors", "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    count = sum(_prod(e["shape"]) for k, e in header.items() if k != "__metadata__")
    return f"{count / 1e6:.2f} M"


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def measured() -> tuple[dict[tuple[str, str], dict], list[str]]:
    """(model, set) -> entry of bundled.json, for the shipped weights only; and the models whose recorded
    SHA-256 is not their shipped file's (left out: their rows belong to other weights)."""
    data = json.loads(BUNDLED_JSON.read_text()) if BUNDLED_JSON.exists() else {"entries": []}
    entries, stale = {}, []
    for entry in data["entries"]:
        name = entry["model"]
        if name != "bicubic":
            directory = WEIGHTS / name
            if not (directory / "model.safetensors").is_file() or entry["sha256"] != weights_sha256(directory):
                stale.append(name)
                continue
        entries[(name, entry["set"])] = entry
    return entries, sorted(set(stale))


def setting(row: dict, config: dict) -> str:
    kind = row["kind"]
    if kind == "oftsr":
        label, default = f"t = {row['t']:g}", row["t"] == config.get("default_t")
    elif kind in ("flow", "meanflow"):
        label = f"{row['steps']} step{'s' if row['steps'] > 1 else ''}"
        default = row["steps"] == config.get("default_steps", 1)
        if kind == "meanflow" and row["steps"] == 1 and row["t"] != 1.0:
            label += f", t = {row['t']:g}"
    else:
        return "one pass" if kind != "bicubic" else "–"
    return label + (" (default)" if default else "")


def settings_of(entries: dict, name: str) -> list[tuple]:
    """The settings measured for ``name`` over all sets, in the order eval wrote them."""
    keys = []
    for set_name in SETS:
        for row in entries.get((name, set_name), {}).get("rows", []):
            key = (row["steps"], row["t"], row["guidance"])
            if key not in keys:
                keys.append(key)
    return keys


def row_for(entries: dict, name: str, set_name: str, key: tuple) -> dict | None:
    rows = entries.get((name, set_name), {}).get("rows", [])
    return next((r for r in rows if (r["steps"], r["t"], r["guidance"]) == key), None)


def rerun_note(names: list[str], sets: tuple[str, ...] = SETS) -> str:
    only = "" if sets == SETS else f" --sets {' '.join(sets)}"
    return f"results being regenerated: `python3 benchmarks/bundled_results.py --models {' '.join(names)}{only}`"


def bundled_summary() -> str:
    """README: every bundled model at its serving settings, PSNR-Y / LPIPS / DISTS on the three sets."""
    configs, (entries, _) = bundled_configs(), measured()
    default = default_model(configs)
    rows, missing = [], []
    for name, config in configs.items():
        label = f"`{name}`" + (" (**default**)" if name == default else "")
        keys = settings_of(entries, name)
        if not keys:
            missing.append(name)
            rows.append([label, WHAT.get(config["kind"], config["kind"]), params(name), "–", "–", "–", "–", "–"])
            continue
        for index, key in enumerate(keys):
            first = next(r for s in SETS if (r := row_for(entries, name, s, key)))
            cells = []
            for set_name in SETS:
                r = row_for(entries, name, set_name, key)
                m = r["metrics"] if r else None
                cells.append(f"{m['psnr_y']:.2f} / {m['lpips']:.4f} / {m['dists']:.4f}" if m else "–")
            rows.append([label if index == 0 else "", WHAT.get(config["kind"], config["kind"]) if index == 0 else "",
                         params(name) if index == 0 else "", setting(first, config), str(first["nfe"]), *cells])
    text = markdown(["model", "what", "parameters", "setting", "NFE", "Set5 PSNR-Y / LPIPS / DISTS",
                     "Set14", "BSD100"], rows)
    shown = [e for (_, set_name), e in entries.items() if set_name in SETS]
    machines = sorted({f"{e['machine']}, {e['rows'][0]['device']}" for e in shown})
    dates = sorted({e["date"] for e in shown})
    text += ("\n\nMeasured by `python3 benchmarks/bundled_results.py` (×4, synthetic protocol: MATLAB-bicubic LR, "
             "PSNR-Y after a 4-pixel border crop, LPIPS (alex) and DISTS: lower is better) on "
             f"{'; '.join(machines) or '–'}, {', '.join(dates) or '–'}; every setting, SSIM and the exact commands "
             "in [docs/evaluation.md](docs/evaluation.md), the rows and each model's weights SHA-256 in "
             "[docs/results/bundled.json](docs/results/bundled.json).")
    if missing:
        text += f"\n\n`{'`, `'.join(missing)}`: {rerun_note(missing)}."
    return text


def bundled_set(set_name: str) -> str:
    configs, (entries, _) = bundled_configs(), measured()
    rows, missing = [], []
    for name, config in configs.items():
        keys = settings_of(entries, name)
        found = [(key, row_for(entries, name, set_name, key)) for key in keys]
        found = [(k, r) for k, r in found if r]
        if not found:
            missing.append(name)
        for _, r in found:
            m = r["metrics"]
            rows.append([f"`{name}`", setting(r, config), str(r["nfe"]), f"{m['psnr_y']:.2f}", f"{m['ssim_y']:.4f}",
                         f"{m['lpips']:.4f}", f"{m['dists']:.4f}", f"{m['hf_ratio']:.4f}",
                         f"{r['seconds_per_image']:.3f}"])
    first = next((e["rows"][0] for (model, s), e in entries.items() if s == set_name), {})
    text = f"{set_name} (×4, {first.get('n_images', '?')} images, {first.get('protocol', '?')} protocol):\n\n"
    text += markdown(["model", "setting", "NFE", "PSNR-Y", "SSIM-Y", "LPIPS", "DISTS", "HF ratio", "s/image"], rows)
    if missing:
        text += f"\n\nNot in this table: `{'`, `'.join(missing)}`: {rerun_note(missing, (set_name,))}."
    return text


def bundled_commands() -> str:
    """Which command, machine and weights each model's rows come from."""
    configs, (entries, stale) = bundled_configs(), measured()
    rows = []
    for name in configs:
        mine = [entries[(name, s)] for s in ALL_SETS if (name, s) in entries]
        if not mine:
            continue
        commands = sorted({e["command"].replace(f"/{e['set']}/", "/SET/").replace(f"-{e['set']}.json", "-SET.json")
                           if e["set"] in SETS else e["command"] for e in mine})  # RealSR's folder: as it is
        rows.append([f"`{name}`", f"`{mine[0]['sha256'][:16]}…`" if mine[0]["sha256"] else "–",
                     ", ".join(e["set"] for e in mine),
                     "; ".join(sorted({f"{e['machine']}, {e['date']}" for e in mine})),
                     "<br>".join(f"`{c}`" for c in commands)])
    text = markdown(["model", "weights SHA-256", "sets", "machine, date", "command (SET: each synthetic set)"], rows)
    if stale:
        text += f"\n\nRows recorded for other weights than the shipped ones, left out: `{'`, `'.join(stale)}`."
    return text


def bicubic_protocol() -> str:
    """The protocol check: bicubic x4 against the published numbers."""
    entries, _ = measured()
    rows = []
    for set_name in SETS:
        entry = entries.get(("bicubic", set_name))
        if entry:
            r = entry["rows"][0]
            rows.append([set_name, r["protocol"], f"{r['metrics']['psnr_y']:.2f}", f"{r['metrics']['ssim_y']:.4f}",
                         PUBLISHED_BICUBIC[set_name]])
    return markdown(["set", "protocol", "PSNR-Y", "SSIM-Y", "published PSNR-Y / SSIM-Y"], rows)


def models_table() -> str:
    """README: what ships, from each model's config.json (as `flowsr models`)."""
    configs = bundled_configs()
    default = default_model(configs)
    rows = []
    for name, config in configs.items():
        kind, info = config["kind"], config.get("training", {})
        if kind == "bicubic":
            trained, defaults = "–", "–"
        else:
            defaults = f"steps {config.get('default_steps', 1)}" + (
                f", t {config.get('default_t', 1.0):g}" if kind in ("oftsr", "meanflow") else "")
            if kind == "sr":
                trained = f"published weights: {info.get('source', '?')}"
            else:
                steps = info.get("steps_total", info.get("steps", "?"))
                wall = info.get("wall_seconds_total", info.get("wall_seconds", "?"))
                trained = f"{steps} steps, batch {info.get('batch_size', '?')}, {wall} s on {info.get('device', '?')}"
                if info.get("teacher"):
                    trained += f", distilled from `{Path(str(info['teacher'])).name}`"
        rows.append([f"`{name}`" + (" (**default**)" if name == default else ""), WHAT.get(kind, kind), params(name),
                     defaults, trained])
    return markdown(["name", "what", "parameters", "defaults", "trained"], rows)


# -- the CPU recipe's A/Bs (docs/cpu-recipe.md) ------------------------------------------------------------

TEACHER_AB_LABELS = {
    "velocity+logit_normal": "velocity + logit-normal (the old GPU presets)",
    "endpoint+logit_normal": "endpoint + logit-normal",
    "endpoint+mix": "endpoint + mix (half each)",
    "endpoint+uniform": "endpoint + uniform (every teacher preset now)",
}


CPU_RECIPE = ROOT / "models" / "cpu"
CPU_RECIPE_MODELS = {"teacher": CPU_RECIPE / "tiny-teacher", "regression": WEIGHTS / "regression-x4",
                     "OFTSR": CPU_RECIPE / "tiny-oftsr", "MeanFlow": CPU_RECIPE / "tiny-meanflow"}


def cpu_recipe_runs() -> str:
    """The CPU recipe's four runs, from each model's config.json -> training."""
    body = []
    for role, directory in CPU_RECIPE_MODELS.items():
        info = json.loads((directory / "config.json").read_text())["training"]
        teacher = f"`{info['teacher']}`" if info.get("teacher") else "–"
        if info.get("teacher_guidance", 1.0) != 1.0:
            teacher += f", guidance {info['teacher_guidance']:g}"
        body.append([role, f"`{directory.relative_to(ROOT)}`", f"`{info['preset']}`", teacher, str(info["steps"]),
                     f"{info['wall_seconds']:.0f} s", info["device"]])
    return markdown(["model", "directory", "preset", "distilled from", "steps", "wall", "machine"], body)


def teacher_ab() -> str:
    data = docs_json("cpu/teacher_ab.json")
    rows = data["rows"]
    best = {"noise_leak": min(r["noise_leak"] for r in rows), "psnr_y_1": max(r["psnr_y_1"] for r in rows),
            "psnr_y_8": max(r["psnr_y_8"] for r in rows)}

    def cell(r, key, digits):
        text = f"{r[key]:.{digits}f}"
        return f"**{text}**" if best.get(key) == r[key] else text

    body = [[TEACHER_AB_LABELS.get(r["variant"], r["variant"]), cell(r, "noise_leak", 3), cell(r, "psnr_y_1", 2),
             cell(r, "hf_ratio_1", 2), cell(r, "psnr_y_8", 2), cell(r, "hf_ratio_8", 2), str(r["steps"]),
             f"{r['train_seconds']:.0f}"] for r in rows]
    return markdown(["head + time sampler", "noise leak", "PSNR-Y 1 step", "HF ratio 1 step", "PSNR-Y 8 steps",
                     "HF ratio 8 steps", "training steps", "training s"], body) + \
        f"\n\n{data['dataset']}, {data['device']}, {data['threads']} thread; best value of each column in bold."


def start_nets() -> str:
    """BSRN and RLFN as implemented in flowsr against their published x4 numbers (docs/start_nets.json, written by
    benchmarks/start_nets.py)."""
    data = docs_json("start_nets.json")
    body = []
    for set_name, rows in data["sets"].items():
        cells = [set_name]
        for net in ("bsrn", "rlfn"):
            row = rows[net]
            note = " (see below)" if not row["within_tolerance"] else ""
            cells += [f"{row['psnr_y']:.3f} / {row['ssim_y']:.4f}", f"{row['published_psnr_y']:.2f}{note}"]
        cells.append(f"{rows['bicubic']['psnr_y']:.3f} / {rows['bicubic']['ssim_y']:.4f}")
        body.append(cells)
    return markdown(["set", "BSRN PSNR-Y / SSIM-Y", "published", "RLFN PSNR-Y / SSIM-Y", "published", "bicubic"], body)


def meanflow_ab() -> str:
    folder = ROOT / "docs" / "cpu" / "meanflow_ab"
    body = []
    for path in sorted(folder.glob("eval-*.json"), key=lambda p: float(p.stem.split("=")[-1])):
        value = path.stem.split("=")[-1]
        rows = {r["steps"]: r["metrics"] for r in json.loads(path.read_text())["results"]}
        label = value + (" (MeanFlow's interpolation points)" if float(value) == 0 else "")
        body.append([label] + [f"{rows[s]['psnr_y']:.2f} / {rows[s]['lpips']:.4f} / {rows[s]['ref_psnr_y']:.2f}"
                               if s in rows else "–" for s in (1, 2, 4)])
    return markdown(["rows at the student's states", "1 step PSNR-Y / LPIPS / ref PSNR-Y", "2 steps", "4 steps"], body)


# -- the two training paths (docs/cpu/train_paths/README.md) ------------------------------------------------

def train_paths_set5() -> str:
    data = docs_json("cpu/train_paths/eval-set5-300-steps.json")
    by_model = {r["model"]: r["metrics"] for r in data["results"]}
    labels = {"teacher": "teacher (4 steps)", "regression": "regression", "oftsr": "OFTSR (1 step)",
              "meanflow": "MeanFlow (1 step)"}
    body = []
    for role, label in labels.items():
        cells = []
        for seed in ("s0", "s1"):
            for path in ("old", "fast"):
                m = by_model.get(f"{role}-{path}-{seed}")
                cells.append(f"{m['psnr_y']:.2f} / {m['ssim_y']:.4f}" if m else "–")
        body.append([label, cells[0], cells[1], cells[2], cells[3]])
    return markdown(["model", "old, seed 0", "fast, seed 0", "old, seed 1", "fast, seed 1"], body)


def train_speed_idle() -> str:
    """docs/cpu/train_paths: crops/s of each path of `flowsr bench --train` and, per path, the bound on its speed-up
    (the old step over the path's loss forward and backward alone), from docs/cpu/bench_train_idle.json."""
    data = docs_json("cpu/bench_train_idle.json")
    rows = data["rows"]
    paths = list(dict.fromkeys(r["path"] for r in rows))
    header = ["objective"] + [f"{p} crops/s" for p in paths] + [f"{p} / {paths[0]}" for p in paths[1:]]
    header += [f"{paths[0]} step ms", f"{paths[0]} loss alone ms"]
    header += ["fast loss alone ms", "bound on fast / old"] if "fast" in paths else []
    header.append("GFLOP per step")
    body = []
    for objective in dict.fromkeys(r["objective"] for r in rows):
        by_path = {r["path"]: r for r in rows if r["objective"] == objective}
        first = by_path[paths[0]]
        line = [objective] + [f"{by_path[p]['crops_per_s']:.1f}" for p in paths]
        line += [f"{by_path[p]['speedup']:.2f}×" for p in paths[1:]]
        line += [f"{first['step_ms']:.1f}", f"{first['loss_ms']:.1f}"]
        if "fast" in paths:
            line += [f"{by_path['fast']['loss_ms']:.1f}", f"{by_path['fast']['speedup_bound']:.2f}×"]
        body.append(line + [f"{first['gflop_per_step']:.2f}"])
    presets = ", ".join(f"`{p}`" for p in dict.fromkeys(r["preset"] for r in rows))
    return markdown(header, body) + (f"\n\n`{data['command']}`: {data['machine']}; presets {presets}, batch "
                                     f"{rows[0]['batch']}, {rows[0]['crop']}² crops.")


# -- the start-network recipe (docs/start-networks.md) -------------------------------------------------------

CHOSEN_START = "bsrn-x4-s0.1"  # the start A/B's chosen variant, kept in models/gpu-pm/bsrn-x4-s0.1
SHOWN = ("psnr_y", "lpips", "dists", "hf_ratio", "ref_psnr_y")  # each cell: those of them that were measured


def shown(row: dict, keys: tuple[str, ...] = SHOWN) -> str:
    return " / ".join(start_ab_report.cell(row, k) for k in keys if row["metrics"].get(k) is not None)


def start_guidance() -> str:
    """The chosen start-network teacher sampled with guidance w on Set14 (the teacher rows of cfg_ablation.json)."""
    rows = [r for r in docs_json("cfg_ablation.json")["rows"] if r["set"] == "Set14" and r["role"] == "teacher"]
    body = []
    for w in sorted({r["guidance"] for r in rows}):
        found = {r["steps"]: r for r in rows if r["guidance"] == w}
        body.append([f"{w:g}"] + [shown(found[n], SHOWN[:4]) if n in found else "–" for n in (4, 8)])
    return markdown(["w", "4 steps: PSNR-Y / LPIPS / DISTS / HF", "8 steps: PSNR-Y / LPIPS / DISTS / HF"], body)


# The chosen OFTSR student's continuations on the CPU, each from the one before (docs/<name>.json: rows, commands,
# training record, label).
CONTINUED = ("start_cpu_continued", "start_cpu_continued_2", "start_cpu_continued_3")


def start_cpu_continued() -> str:
    """The chosen OFTSR student as the GPU left it (start_ab.json) and after each continuation on the CPU
    (CONTINUED: the files present)."""
    gpu = [r for r in docs_json("start_ab.json")["rows"] if r["variant"] == CHOSEN_START and r["role"] == "oftsr"]
    runs = [docs_json(f"{name}.json") for name in CONTINUED if (ROOT / "docs" / f"{name}.json").exists()]
    body = []
    for set_name in SETS:
        for r in (r for r in gpu if r["set"] == set_name):
            cells = []
            for data in runs:
                cpu = next((c for c in data["rows"] if c["set"] == set_name and c["t"] == r["t"]), None)
                cells.append(shown(cpu) if cpu else "–")
            body.append([set_name, f"{r['t']:g}", shown(r), *cells])
    first = runs[0]["training"]
    gpu_steps = first["steps_total"] - first["steps"]
    return markdown(["set", "t", f"GPU student ({gpu_steps} steps)"]
                    + [f"{data['label']} (+{data['training']['steps']} steps)" for data in runs], body)


def start_t_sweep() -> str:
    """The first CPU continuation of the OFTSR student over t: its t = 0, 0.5, 1 rows (start_cpu_continued.json)
    and the finer grid between (start_t_sweep.json), on Set14 and BSD100; the best LPIPS of each set in bold."""
    sets = ("Set14", "BSD100")
    rows = {(r["set"], r["t"]): r for name in ("start_cpu_continued.json", "start_t_sweep.json")
            for r in docs_json(name)["rows"] if r["set"] in sets}
    best = {s: min((r for (where, _), r in rows.items() if where == s), key=lambda r: r["metrics"]["lpips"])
            for s in sets}
    body = []
    for t in sorted({t for _, t in rows}):
        cells = []
        for s in sets:
            row = rows.get((s, t))
            cell = shown(row, SHOWN[:4]) if row else "–"
            cells.append(f"**{cell}**" if row is best[s] else cell)
        body.append([f"{t:g}", *cells])
    return markdown(["t", *(f"{s}: PSNR-Y / LPIPS / DISTS / HF" for s in sets)], body)


def start_cpu_teacher() -> str:
    """The chosen teacher as the GPU left it (start_ab.json for 1-8 steps, start_teacher_gpu_long.json for more)
    beside the same teacher continued on the CPU (start_cpu_teacher.json), by set and Euler step count."""
    gpu = [r for r in docs_json("start_ab.json")["rows"] if r["variant"] == CHOSEN_START and r["role"] == "teacher"]
    gpu += docs_json("start_teacher_gpu_long.json")["rows"]
    cpu = docs_json("start_cpu_teacher.json")
    body = []
    for set_name in SETS:
        cpu_rows_here = {r["steps"]: r for r in cpu["rows"] if r["set"] == set_name}
        gpu_rows_here = {r["steps"]: r for r in gpu if r["set"] == set_name}
        for steps in sorted(cpu_rows_here):
            before = gpu_rows_here.get(steps)
            body.append([set_name, steps, shown(before, SHOWN[:4]) if before else "–",
                         shown(cpu_rows_here[steps], SHOWN[:4])])
    training = cpu["training"]
    return markdown(["set", "steps", f"GPU teacher ({training['steps_total'] - training['steps']} steps)",
                     f"{cpu['label']} (+{training['steps']} steps)"], body)


METRIC_NAMES = {"psnr_y": "PSNR-Y", "lpips": "LPIPS", "dists": "DISTS"}


def _better(key: str, new: float, old: float) -> bool:
    return new > old if key == "psnr_y" else new < old


def _verdict(pairs: dict[str, tuple[dict, dict]], keys: tuple[str, ...]) -> str:
    """"yes" when the new row beats the bundled one in every key on every set; else "no: " and where it does not."""
    misses = []
    for key in keys:
        sets = [s for s, (old, new) in pairs.items() if not _better(key, new["metrics"][key], old["metrics"][key])]
        if sets:
            misses.append(f"{METRIC_NAMES[key]} not better on {' and '.join(sets)}")
    return "yes" if not misses else "no: " + "; ".join(misses)


# each end a bundled model serves: (bundled model, role in the A/B, the end, how its row is picked, shown, judged)
ENDS = [
    ("teacher-x4", "teacher", "fidelity, 1 step", lambda rows: [r for r in rows if r["steps"] == 1],
     ("psnr_y",), ("psnr_y",)),
    ("teacher-x4", "teacher", "realism, best LPIPS of its step counts", lambda rows: rows, ("lpips", "dists"),
     ("lpips", "dists")),
    ("oftsr-x4", "oftsr", "fidelity, t = 0", lambda rows: [r for r in rows if r["t"] == 0], ("psnr_y",), ("psnr_y",)),
    ("oftsr-x4", "oftsr", "realism, best LPIPS of its t", lambda rows: rows, ("lpips", "dists"), ("lpips", "dists")),
    ("meanflow-x4", "meanflow", "1 step (its default), realism",
     lambda rows: [r for r in rows if r["steps"] == 1 and r["t"] in (None, 1.0)], ("psnr_y", "lpips", "dists"),
     ("lpips", "dists")),
]


def not_shipped(new_rows: list[dict]) -> str:
    """The rule that decides shipping, applied: each bundled model (docs/results/bundled.json) against new rows
    (each with its ``set`` and ``role``: teacher, oftsr or meanflow) on Set14 and BSD100, at the end it serves."""
    entries, _ = measured()
    sets, body = ("Set14", "BSD100"), []
    for name, role, end, pick, keys, judged in ENDS:
        pairs = {}
        for set_name in sets:
            old = pick(entries.get((name, set_name), {}).get("rows", []))
            new = pick([r for r in new_rows if r["role"] == role and r["set"] == set_name])
            if old and new:
                pairs[set_name] = (min(old, key=lambda r: r["metrics"]["lpips"]),
                                   min(new, key=lambda r: r["metrics"]["lpips"]))
        if len(pairs) < len(sets):
            continue
        body.append([f"`{name}`, {end}", *(f"{_side(old, keys)} → {_side(new, keys)}" for old, new in pairs.values()),
                     _verdict(pairs, judged)])
    return markdown(["model, the end it serves", "Set14: bundled → new", "BSD100: bundled → new",
                     "new better there?"], body)


def start_not_shipped() -> str:
    """The chosen start-network models of the A/B (docs/start_ab.json) against the bundled ones."""
    return not_shipped([r for r in docs_json("start_ab.json")["rows"] if r["variant"] == CHOSEN_START])


REALSR_BUNDLED = ("bicubic", "bsrn-x4", "rlfn-x4", "regression-x4", "oftsr-x4", "teacher-x4", "meanflow-x4")


def start_realsr() -> str:
    """RealSR (real camera LR): the bundled models (bundled.json) beside the start-network OFTSR student
    (start_realsr.json)."""
    entries, _ = measured()
    data = docs_json("start_realsr.json")
    keys = ("psnr_y", "ssim_y", "lpips", "dists")
    body = []
    for name in REALSR_BUNDLED:
        for row in entries.get((name, "RealSR"), {}).get("rows", []):
            body.append([f"`{name}`", start_ab_report.setting(row, "–"), *(start_ab_report.cell(row, k) for k in keys)])
    for row in data["rows"]:
        body.append(["start-network OFTSR (BSRN, σp 0.1; not shipped)", start_ab_report.setting(row, "–"),
                     *(start_ab_report.cell(row, k) for k in keys)])
    return markdown(["model", "setting", "PSNR-Y", "SSIM-Y", "LPIPS", "DISTS"], body) + (
        f"\n\nThe last rows: `{data['command']}` ({data['machine']}, {data['date']}); the others: "
        "docs/results/bundled.json (`python3 benchmarks/bundled_results.py --sets RealSR`).")


def _side(row: dict, keys: tuple[str, ...]) -> str:
    """A row's ``keys``, and for a realism pick (LPIPS without PSNR) the setting it was picked at."""
    if "lpips" not in keys or "psnr_y" in keys:
        return shown(row, keys)
    return f"{shown(row, keys)} ({start_ab_report.setting(row, '–')})"


# -- the CPU recipe's models (docs/cpu/results.md, docs/cpu-recipe.md) ---------------------------------------

ROLES = {"flow": "teacher", "oftsr": "oftsr", "meanflow": "meanflow"}


def cpu_rows(set_name: str) -> list[dict]:
    """The rows of benchmarks/eval_models.sh's merged eval-SET.json of models/cpu (docs/cpu/eval)."""
    return docs_json(f"cpu/eval/eval-{set_name}.json")["results"]


def cpu_results(set_name: str) -> str:
    rows = cpu_rows(set_name)
    return (f"{set_name} (×4, {rows[0]['protocol']} protocol, {rows[0]['n_images']} images):\n\n"
            + report.markdown_table(rows, latency=False))


def cpu_targets() -> str:
    """Issue 14's targets T1-T5 (benchmarks/targets.py) on Set5 and Set14."""
    checked = {set_name: targets.check(cpu_rows(set_name)) for set_name in ("Set5", "Set14")}
    body = []
    for index, first in enumerate(checked["Set5"]):
        cells = [f"{c[index]['measured']}: **{'met' if c[index]['met'] else 'not met'}**" for c in checked.values()]
        body.append([f"{first['target']} {targets.TARGETS[first['target']]}", *cells])
    return markdown(["target", *checked], body)


def cpu_not_shipped() -> str:
    """The CPU recipe's teacher and students (unguided teacher rows only) against the bundled models."""
    rows = [{"set": set_name, "role": ROLES.get(r["kind"]), **r} for set_name in ("Set14", "BSD100")
            for r in cpu_rows(set_name) if r["kind"] != "flow" or r["guidance"] == 1.0]
    return not_shipped(rows)


def real_world_tiny() -> str:
    """The tiny teacher trained on bicubic and fine-tuned with Real-ESRGAN degradations, on RealSR
    (docs/real-world/tiny_teacher_real.json: `flowsr eval --json`, per-image rows dropped)."""
    rows = docs_json("real-world/tiny_teacher_real.json")["results"]
    return (f"RealSR (×4, {rows[0]['n_images']} pairs, {rows[0]['protocol']} protocol):\n\n"
            + report.markdown_table(rows, latency=False))


# Every table a page may mark, by its marker name.
TABLES = {
    "bundled": bundled_summary,
    **{f"bundled-{set_name}": (lambda set_name=set_name: bundled_set(set_name)) for set_name in ALL_SETS},
    "bundled-commands": bundled_commands,
    "bicubic-protocol": bicubic_protocol,
    "models": models_table,
    "cpu-recipe-runs": cpu_recipe_runs,
    "teacher-ab": teacher_ab,
    "meanflow-ab": meanflow_ab,
    "train-paths-set5": train_paths_set5,
    "train-speed-idle": train_speed_idle,
    "train-paths-summary": lambda: train_paths.summary(docs_json("cpu/train_paths/curves.json")),
    "train-paths-curves": lambda: train_paths.curves_markdown(docs_json("cpu/train_paths/curves.json")),
    "start-nets": start_nets,
    "start-guidance": start_guidance,
    "start-cpu-continued": start_cpu_continued,
    "start-cpu-teacher": start_cpu_teacher,
    "start-t-sweep": start_t_sweep,
    "start-not-shipped": start_not_shipped,
    "start-realsr": start_realsr,
    **{f"cpu-results-{set_name}": (lambda set_name=set_name: cpu_results(set_name)) for set_name in SETS},
    "cpu-targets": cpu_targets,
    "cpu-not-shipped": cpu_not_shipped,
    "start-ab": lambda: start_ab_report.tables(docs_json("start_ab.json")),
    "cfg-ablation": lambda: cfg_ablation_report.tables(docs_json("cfg_ablation.json")),
    "cfg-summary": lambda: cfg_ablation_report.summary(docs_json("cfg_ablation.json")["rows"]),
    "onnx-parity": lambda: onnx_parity.table(docs_json("onnx/parity.json")),
    "onnx-speed": lambda: onnx_report.speed_table(ROOT / "docs" / "onnx" / "speed"),
    "real-world-tiny": real_world_tiny,
    "degradations-speed": lambda: bench_degradations.table(docs_json("real-world/degradations.json")),
    "onnx-settings": lambda: onnx_report.settings_table(ROOT / "docs" / "onnx" / "speed"),
    "data-scale": lambda: data_scale.table(docs_json("scaling/data_scale.json")),
    "sharded-upscale": lambda: sharded_upscale.table(docs_json("scaling/sharded_upscale.json")),
}


# -- files ---------------------------------------------------------------------------------------------


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def regenerate(text: str, where: str) -> tuple[str, list[str]]:
    """``text`` with every marked table rewritten; and the names of those that changed."""
    changed = []

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"{where}: unknown table {name!r} (known: {', '.join(sorted(TABLES))})")
        body = TABLES[name]().strip("\n") + "\n"
        if body != match["body"]:
            changed.append(name)
        return f"<!-- table:{name} -->\n{body}<!-- /table:{name} -->"

    return MARKER.sub(replace, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs")
    args = parser.parse_args(argv)
    differing = []
    for page in pages():
        text = page.read_text()
        if "<!-- table:" not in text:
            continue
        where = str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)
        new, changed = regenerate(text, where)
        differing += [f"{where}: table {name}" for name in changed]
        if changed and not args.check:
            page.write_text(new)
    for line in differing:
        print(("differs: " if args.check else "rewrote: ") + line)
    if args.check and differing:
        print("run: python3 benchmarks/tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
