"""Turn what `benchmarks/gpu_run.sh` left in $OUT into model directories, and optionally ship them.

    python3 benchmarks/gpu_unpack.py FILES_AT runs/gpu2/models [--ship] [--command "INIT=1 bash ..."]

FILES_AT holds NAME.safetensors (bf16 weights) and results.tar.gz (whose runs/NAME/config.json is each
model's config). Writes DEST/NAME/{model.safetensors, config.json}; the config records the bf16 storage,
the command and the training images actually carried (.gpudata/train.txt). With --ship, teacher-x4, regression-x4,
oftsr-x4 and meanflow-x4 are also copied into flowsr/weights/ (the wheel's bundled models).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from pathlib import Path

SHIPPED = ("teacher-x4", "regression-x4", "oftsr-x4", "meanflow-x4")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files_at", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--ship", action="store_true")
    parser.add_argument("--command", default="bash benchmarks/gpu_run.sh")
    args = parser.parse_args()
    with tarfile.open(args.files_at / "results.tar.gz") as archive:
        configs = {Path(m.name).parent.name: json.load(archive.extractfile(m))
                   for m in archive.getmembers() if m.name.endswith("/config.json")}
    data_note = Path(".gpudata/train.txt")
    for weights in sorted(args.files_at.glob("*.safetensors")):
        name = weights.stem
        if name not in configs:
            print(f"skip {weights}: no {name}/config.json in results.tar.gz")
            continue
        config = configs[name]
        config["name"] = name
        config["training"].update(storage="bf16", command=args.command)
        if data_note.exists():
            config["training"]["data"] = data_note.read_text().strip()
        for target in [args.dest / name] + ([Path("flowsr/weights") / name] if args.ship and name in SHIPPED else []):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, target / "model.safetensors")
            (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            print(f"wrote {target}")


if __name__ == "__main__":
    main()
