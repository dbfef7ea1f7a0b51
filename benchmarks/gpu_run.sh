#!/usr/bin/env bash
# The whole GPU job in one call: train teacher-x4 and regression-x4 side by side, distil oftsr-x4 and
# meanflow-x4 from the teacher side by side, evaluate on Set5/Set14 (all rows), time inference and
# training steps, and pack the bf16 weights + results into $OUT.
#
#   bash benchmarks/gpu_prepare.sh                   # here: copy data + metric weights into .gpudata/
#   device run: bash benchmarks/gpu_run.sh           # there (carry .gpudata)
#   CPU dry run: TEACHER_S=20 STUDENT_S=15 EXTRA="net.channels=16 batch_size=2 crop=32" \
#                OUT=/tmp/gpuout bash benchmarks/gpu_run.sh
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FLOWSR_WEIGHTS_DIR="$PWD/.gpudata/weights"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUNS=${RUNS:-runs}
TEACHER_S=${TEACHER_S:-190}      # wall seconds for teacher and regression (trained concurrently)
STUDENT_S=${STUDENT_S:-125}      # wall seconds for each student (trained concurrently)
GUIDANCE=${GUIDANCE:-1.5}
EXTRA=${EXTRA:-}
DATA=.gpudata/train
COMMON="data=$DATA max_steps=1000000 val_images=0 ckpt_every=1000 log_every=50"
log() { echo "[$(date +%T)] $*"; }

log "machine: $(python3 -c 'import torch;print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
if [ -z "${SKIP_TRAIN:-}" ]; then
log "phase 1: teacher-x4 + regression-x4 for ${TEACHER_S}s each, concurrently"
python3 -m flowsr train --preset teacher-x4 --out $RUNS/teacher-x4 $COMMON time_limit=$TEACHER_S $EXTRA \
  > $RUNS-teacher.log 2>&1 &
python3 -m flowsr train --preset regression-x4 --out $RUNS/regression-x4 $COMMON time_limit=$TEACHER_S $EXTRA \
  > $RUNS-regression.log 2>&1 &
wait
tail -c 300 $RUNS-teacher.log; tail -c 300 $RUNS-regression.log

log "phase 2: oftsr-x4 + meanflow-x4 (guidance $GUIDANCE) for ${STUDENT_S}s each, concurrently"
python3 -m flowsr train --preset oftsr-x4 --out $RUNS/oftsr-x4 teacher=$RUNS/teacher-x4 $COMMON \
  time_limit=$STUDENT_S $EXTRA > $RUNS-oftsr.log 2>&1 &
python3 -m flowsr train --preset meanflow-x4 --out $RUNS/meanflow-x4 teacher=$RUNS/teacher-x4 guidance=$GUIDANCE \
  $COMMON time_limit=$STUDENT_S $EXTRA > $RUNS-meanflow.log 2>&1 &
wait
tail -c 300 $RUNS-oftsr.log; tail -c 300 $RUNS-meanflow.log
fi

log "phase 3: evaluation (Set5, Set14) and speed, concurrently"
MODELS="bicubic"
for NAME in regression-x4 teacher-x4 oftsr-x4 meanflow-x4; do
  [ -f $RUNS/$NAME/model.safetensors ] && MODELS="$MODELS $RUNS/$NAME"
done
for SET in Set5 Set14; do
  python3 -m flowsr eval --model $MODELS --data .gpudata/$SET --scale 4 --steps 1,2,4,16,32 --t 0,0.5,1 \
    --metrics psnr,ssim,hf,lpips --json $RUNS/eval-$SET.json > $RUNS/eval-$SET.txt 2>&1 &
done
python3 -m flowsr eval --model $RUNS/teacher-x4 --data .gpudata/Set5 --scale 4 --steps 4 --guidance $GUIDANCE \
  --metrics psnr,ssim,hf,lpips --json $RUNS/eval-Set5-teacher-cfg.json > $RUNS/eval-Set5-teacher-cfg.txt 2>&1 &
wait
python3 -m flowsr bench --model $MODELS --steps 1,4,16,32 --size 512 --batch 1 --repeat 10 --matmul \
  --json $RUNS/bench-b1.json > $RUNS/bench-b1.txt 2>&1
python3 -m flowsr bench --model $RUNS/oftsr-x4 $RUNS/teacher-x4 --steps 1 --size 512 --batch 16 --repeat 5 \
  --matmul --json $RUNS/bench-b16.json > $RUNS/bench-b16.txt 2>&1
python3 -m flowsr bench --train teacher-x4 --json $RUNS/bench-train.json > $RUNS/bench-train.txt 2>&1

log "packing"
for NAME in teacher-x4 regression-x4 oftsr-x4 meanflow-x4; do
  [ -f $RUNS/$NAME/model.safetensors ] || continue
  python3 - "$RUNS/$NAME" "$OUT/$NAME.safetensors" <<'EOF'
import sys, torch
from safetensors.torch import load_file, save_file
state = load_file(sys.argv[1] + "/model.safetensors")
save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, sys.argv[2])
EOF
done
tar czf "$OUT/results.tar.gz" $RUNS/*.json $RUNS/*.txt $RUNS-*.log $RUNS/*/config.json $RUNS/*/log.jsonl \
  $RUNS/*/train_config.json 2>/dev/null
ls -la "$OUT"
for F in $RUNS/eval-Set5.txt $RUNS/eval-Set14.txt $RUNS/eval-Set5-teacher-cfg.txt $RUNS/bench-b1.txt \
         $RUNS/bench-b16.txt $RUNS/bench-train.txt; do echo "== $F"; cat $F | grep -v "^\[" | tail -25; done
