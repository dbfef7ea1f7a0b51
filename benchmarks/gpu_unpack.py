"""Turn what `benchmarks/gpu_run.sh` left in $OUT into model directories.

    python3 benchmarks/gpu_unpack.py FILES_AT DEST [--command "bash benchmarks/gpu_run.sh"]

FILES_AT holds weights*.tar (each member RUNS/<variant>/<role>/model.safetensors, bf16) and results.tar.gz
(RUNS/<variant>/<role>/{config.json, log.jsonl, train_config.json}, the logs, the bench and eval JSON and text).
Writes DEST/<variant>/<role>/{model.safetensors, config.json, log.jsonl, train_config.json} and DEST/<the rest>;
each config records the bf16 storage, the command and the training images actually carried
(.gpudata/train.txt). Members are read by name only (no paths outside DEST, no links).
Ship a model afterwards with benchmarks/ship_models.py.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path, PurePosixPath

KEPT = {"model.safetensors", "config.json", "log.jsonl", "train_config.json"}


def relative(name: str, depth: int) -> PurePosixPath | None:
    """The last ``depth`` parts of a member name, or None when they would leave the destination."""
    parts = PurePosixPath(name).parts[-depth:]
    if len(parts) < depth or any(p in ("", ".", "..") or "/" in p for p in parts):
        return None
    return PurePosixPath(*parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files_at", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--command", default="bash benchmarks/gpu_run.sh")
    args = parser.parse_args()
    data_note = Path(".gpudata/train.txt")
    archives = sorted(args.files_at.glob("weights*.tar")) + [args.files_at / "results.tar.gz"]
    for path in archives:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                filename = PurePosixPath(member.name).name
                target = relative(member.name, 3) if filename in KEPT else relative(member.name, 1)
                if target is None:
                    continue
                out = args.dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(archive.extractfile(member).read())
    for config_path in sorted(args.dest.glob("*/*/config.json")):
        config = json.loads(config_path.read_text())
        config["training"].update(storage="bf16", command=args.command)
        if data_note.exists():
            config["training"]["data"] = data_note.read_text().strip()
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        print(f"wrote {config_path.parent}")


if __name__ == "__main__":
    main()
