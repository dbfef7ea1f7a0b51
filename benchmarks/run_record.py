"""One CPU run's measurements as one committed JSON under docs/: what ran, how it was trained, every row.

    python3 benchmarks/run_record.py --model runs/cpu-teacher-pm --label "continued on the CPU" \
        --what "..." --train-command "flowsr train ..." --eval-command "flowsr eval ..." \
        --out docs/start_cpu_teacher.json runs/cpu-teacher-eval/Set14.json runs/cpu-teacher-eval/BSD100.json

Each EVAL_JSON is what ``flowsr eval --json`` wrote; its rows are kept without their per-image values and tagged
with their test set (``set``). The training record is the ``training`` block of the model's config.json (steps,
wall time, machine, init, teacher). ``benchmarks/tables.py`` reads such files (e.g. tables.CONTINUED).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def record(model: Path, label: str, what: str, train_command: str, eval_commands: list[str],
           eval_files: list[Path]) -> dict:
    rows = []
    for path in eval_files:
        data = json.loads(path.read_text())
        if "results" not in data:
            raise ValueError(f"{path}: not a `flowsr eval --json` file (no 'results')")
        rows += [{"set": data["dataset"], **{k: v for k, v in row.items() if k != "per_image"}}
                 for row in data["results"]]
    training = json.loads((model / "config.json").read_text()).get("training", {})
    return {"label": label, "what": what, "train_command": train_command, "eval_commands": eval_commands,
            "training": training, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_json", nargs="+", type=Path)
    parser.add_argument("--model", type=Path, required=True, help="the run's model directory (its config.json)")
    parser.add_argument("--label", required=True, help="the column or row label tables print")
    parser.add_argument("--what", required=True, help="one sentence: which model, trained how")
    parser.add_argument("--train-command", required=True)
    parser.add_argument("--eval-command", action="append", default=[], help="as run (repeat for several)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        data = record(args.model, args.label, args.what, args.train_command, args.eval_command, args.eval_json)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out} ({len(data['rows'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
