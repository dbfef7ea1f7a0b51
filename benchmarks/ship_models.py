"""Ship trained run directories as the wheel's bundled models (flowsr/weights/NAME).

    python3 benchmarks/ship_models.py runs/teacher=teacher-x4 runs/regression=regression-x4 \
        runs/oftsr=oftsr-x4 runs/meanflow=meanflow-x4 --note "CPU, benchmarks/cpu_train.sh"
    python3 benchmarks/ship_models.py runs/teacher=tiny-teacher ... --dest models/cpu --bf16   # kept, not shipped

Copies each run's EMA weights (``model.safetensors``, float32) and ``config.json``; the config's name
becomes NAME (teachers of students are renamed to their shipped names too) and its provenance keeps the
run's steps, wall time and machine, plus the note. Replace a bundled model only after measuring it
against the one it replaces (issue 14: better on Set14 and BSD100 at the end it serves).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

WEIGHTS = Path("flowsr/weights")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pairs", nargs="+", metavar="RUN=NAME")
    parser.add_argument("--note", default="")
    parser.add_argument("--dest", type=Path, default=WEIGHTS, help="default: flowsr/weights (the wheel's models)")
    parser.add_argument("--bf16", action="store_true", help="store the weights as bfloat16 (half the size)")
    args = parser.parse_args()
    pairs = [pair.split("=", 1) for pair in args.pairs]
    # a student's teacher is renamed to what it is shipped as: a bundled name, or the directory written
    renamed = {str(Path(run)): name if args.dest == WEIGHTS else str(args.dest / name) for run, name in pairs}
    for run, name in pairs:
        config = json.loads((Path(run) / "config.json").read_text())
        config["name"] = name
        training = config["training"]
        training["teacher"] = renamed.get(str(Path(training.get("teacher") or ".")), training.get("teacher", ""))
        training["init"] = renamed.get(str(Path(training.get("init") or ".")), training.get("init", ""))
        if args.note:
            training["command"] = args.note
        target = args.dest / name
        target.mkdir(parents=True, exist_ok=True)
        if args.bf16:
            import torch
            from safetensors.torch import load_file, save_file

            state = load_file(Path(run) / "model.safetensors")
            save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, target / "model.safetensors")
            training["storage"] = "bf16"
        else:
            shutil.copyfile(Path(run) / "model.safetensors", target / "model.safetensors")
        (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        print(f"{run} -> {target} ({training.get('steps')} steps, {training.get('wall_seconds')} s on "
              f"{training.get('device')})")


if __name__ == "__main__":
    main()
