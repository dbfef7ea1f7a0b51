#!/usr/bin/env bash
# ONNX Runtime against torch on this CPU: the README's Deploy speed tables, in one script. Run it on an
# idle machine (timings on a shared one are not clean):
#   bash benchmarks/onnx_cpu.sh                          # OUT=runs/onnx THREADS=$(nproc) SIZES=256,512 REPEAT=10
#   SIZES=64 REPEAT=2 bash benchmarks/onnx_cpu.sh        # a quick check that every step runs
# Needs the onnx extra (pip install -e ".[onnx]") and a C++ compiler for torch.compile.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/onnx}
THREADS=${THREADS:-$(nproc)}
SIZES=${SIZES:-256,512}
REPEAT=${REPEAT:-10}
MODEL=${MODEL:-oftsr-x4}
export OMP_NUM_THREADS=$THREADS  # torch's threads; ONNX Runtime's intra-op threads default to the same
flowsr() { python3 -m flowsr "$@"; }

# exports (checked: onnx.checker, one ONNX Runtime call against torch)
[ -f "$OUT/$MODEL-onnx/model.onnx" ] || flowsr export "$MODEL" -o "$OUT/$MODEL-onnx"
[ -f "$OUT/$MODEL-onnx-fp16/model.onnx" ] || flowsr export "$MODEL" -o "$OUT/$MODEL-onnx-fp16" --dtype float16

# 1. side by side in one run: torch eager, torch.compile (inductor) and ONNX Runtime with its defaults
flowsr bench --model "$MODEL" "$OUT/$MODEL-onnx" --device cpu --size "$SIZES" --repeat "$REPEAT" \
  --compile none,default --json "$OUT/bench.json"

# 2. what each ONNX Runtime setting buys (speedup_vs_first: against 1 thread, no graph optimisation)
flowsr bench --model "$OUT/$MODEL-onnx" --device cpu --size "$SIZES" --repeat "$REPEAT" \
  --ort-threads "$([ "$THREADS" = 1 ] && echo 1 || echo "1,$THREADS")" --ort-opt disable,basic,extended,all --ort-execution sequential,parallel \
  --json "$OUT/bench_ort.json"

# 3. the float16 graph on the CPU, beside the float32 one
flowsr bench --model "$OUT/$MODEL-onnx" "$OUT/$MODEL-onnx-fp16" --device cpu --size "$SIZES" \
  --repeat "$REPEAT" --json "$OUT/bench_fp16.json"

# 4. peak RSS with one backend per process (rows of one process share its memory history)
for variant in "$MODEL none" "$MODEL default" "$OUT/$MODEL-onnx none"; do
  set -- $variant
  flowsr bench --model "$1" --device cpu --size "${SIZES##*,}" --repeat 3 --compile "$2" \
    --json "$OUT/memory_$(basename "$1")_$2.json"
done
# what ran, for the tables (python3 benchmarks/onnx_report.py "$OUT"; docs/onnx/speed/ is such a folder)
python3 - "$OUT" "$MODEL" "$THREADS" "$SIZES" "$REPEAT" <<'PY'
import datetime, json, sys
from pathlib import Path
from flowsr.bench import machine
from flowsr.catalog import model_path, weights_sha256
out, model, threads, sizes, repeat = sys.argv[1:]
command = f"OUT={out} THREADS={threads} SIZES={sizes} REPEAT={repeat} MODEL={model} bash benchmarks/onnx_cpu.sh"
run = {"command": command, "model": model, "sha256": weights_sha256(model_path(model)), "threads": int(threads),
       "sizes": sizes, "repeat": int(repeat), "date": datetime.date.today().isoformat(),
       "machine": machine(threads=int(threads))}
Path(out, "run.json").write_text(json.dumps(run, indent=2) + "\n")
PY
echo "wrote $OUT/run.json, bench.json, bench_ort.json, bench_fp16.json, memory_*.json"
