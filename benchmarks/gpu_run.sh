#!/usr/bin/env bash
# The whole GPU job in one call: train teacher-x4 and regression-x4 side by side, distil oftsr-x4 and
# meanflow-x4 from the teacher side by side, a quick Set5 check (PSNR, HF ratio, and each student's
# ref_psnr_y against its teacher's 32-step output from the same noise), speed (eager and torch.compile),
# and pack the bf16 weights + logs into $OUT. The presets carry the recipe of issue 14 (endpoint head,
# uniform t, raw-t embedding; MeanFlow on the samplers' (t, s) pairs with per-sample adaptive weights). Perceptual metrics and the big test sets are computed
# afterwards on the CPU from the returned weights (benchmarks/eval_models.sh), so device time goes
# to training.
#
#   bash benchmarks/gpu_prepare.sh                   # here: data into .gpudata/ (within 64 MiB)
#   device run: bash benchmarks/gpu_run.sh           # there (carry .gpudata): from scratch at full size
#               INIT=1 bash benchmarks/gpu_run.sh    # continue from the bundled models instead; only
#                                                    # when they are full-size models of this recipe
#   CPU dry run: TEACHER_S=20 STUDENT_S=15 EXTRA="net.channels=16 batch_size=2 crop=32" SKIP_BENCH=1 \
#                OUT=/tmp/gpuout bash benchmarks/gpu_run.sh
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUNS=${RUNS:-runs}
TEACHER_S=${TEACHER_S:-240}      # wall seconds for teacher and regression (trained concurrently)
STUDENT_S=${STUDENT_S:-150}      # wall seconds for each student (trained concurrently)
GUIDANCE=${GUIDANCE:-1.5}
EXTRA=${EXTRA:-}
DATA=.gpudata/train
COMMON="data=$DATA max_steps=1000000 val_images=0 ckpt_every=1000 log_every=50"
INIT_TEACHER=""; INIT_REGRESSION=""; INIT_OFTSR=""; INIT_MEANFLOW=""
if [ -n "${INIT:-}" ]; then
  # init= copies the init model's network: refuse bundled models of another size or recipe
  python3 benchmarks/same_recipe.py teacher-x4 regression-x4 oftsr-x4 meanflow-x4 || exit 1
  INIT_TEACHER="init=teacher-x4"; INIT_OFTSR="init=oftsr-x4"; INIT_MEANFLOW="init=meanflow-x4"
  INIT_REGRESSION="init=regression-x4"
fi
log() { echo "[$(date +%T)] $*"; }

log "machine: $(python3 -c 'import torch;print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
log "data: $(cat .gpudata/train.txt 2>/dev/null || ls $DATA | wc -l)"
if [ -z "${SKIP_TRAIN:-}" ]; then
log "phase 1: teacher-x4 + regression-x4 for ${TEACHER_S}s each, concurrently ${INIT:+(continued)}"
python3 -m flowsr train --preset teacher-x4 --out $RUNS/teacher-x4 $COMMON time_limit=$TEACHER_S $INIT_TEACHER \
  $EXTRA > $RUNS-teacher.log 2>&1 &
python3 -m flowsr train --preset regression-x4 --out $RUNS/regression-x4 $COMMON time_limit=$TEACHER_S \
  $INIT_REGRESSION $EXTRA > $RUNS-regression.log 2>&1 &
wait
tail -c 300 $RUNS-teacher.log; tail -c 300 $RUNS-regression.log

log "phase 2: oftsr-x4 + meanflow-x4 (guidance $GUIDANCE) for ${STUDENT_S}s each, concurrently"
python3 -m flowsr train --preset oftsr-x4 --out $RUNS/oftsr-x4 teacher=$RUNS/teacher-x4 $COMMON \
  time_limit=$STUDENT_S $INIT_OFTSR $EXTRA > $RUNS-oftsr.log 2>&1 &
python3 -m flowsr train --preset meanflow-x4 --out $RUNS/meanflow-x4 teacher=$RUNS/teacher-x4 guidance=$GUIDANCE \
  $COMMON time_limit=$STUDENT_S $INIT_MEANFLOW $EXTRA > $RUNS-meanflow.log 2>&1 &
wait
tail -c 300 $RUNS-oftsr.log; tail -c 300 $RUNS-meanflow.log
fi

log "phase 3: Set5 PSNR check and speed"
MODELS="bicubic"
for NAME in regression-x4 teacher-x4 oftsr-x4 meanflow-x4; do
  [ -f $RUNS/$NAME/model.safetensors ] && MODELS="$MODELS $RUNS/$NAME"
done
python3 -m flowsr eval --model $MODELS --data .gpudata/Set5 --scale 4 --steps 1,2,4,8,16,32 --t 0,0.5,1 \
  --metrics psnr,ssim,hf --json $RUNS/eval-Set5.json > $RUNS/eval-Set5.txt 2>&1
for NAME in oftsr-x4 meanflow-x4; do  # how well each student copied its teacher (guidance: its own)
  [ -f $RUNS/$NAME/model.safetensors ] && python3 -m flowsr eval --model $RUNS/$NAME --data .gpudata/Set5 \
    --scale 4 --steps 1,2,4 --t 0,1 --metrics psnr,hf --reference $RUNS/teacher-x4 \
    --json $RUNS/eval-Set5-ref-$NAME.json > $RUNS/eval-Set5-ref-$NAME.txt 2>&1
done
if [ -z "${SKIP_BENCH:-}" ]; then
python3 -m flowsr bench --model $MODELS --steps 1,4,16,32 --size 512 --batch 1 --repeat 10 --matmul \
  --json $RUNS/bench-b1.json > $RUNS/bench-b1.txt 2>&1
# fast paths for the one-step student: torch.compile (fused kernels) at batch 16, CUDA graphs at batch 1
python3 -m flowsr bench --model $RUNS/oftsr-x4 --size 512 --batch 16 --repeat 10 --matmul --compile none,default \
  --json $RUNS/bench-b16-compile.json > $RUNS/bench-b16-compile.txt 2>&1
python3 -m flowsr bench --model $RUNS/oftsr-x4 --size 512 --batch 1 --repeat 20 --matmul --compile reduce-overhead \
  --json $RUNS/bench-b1-graphs.json > $RUNS/bench-b1-graphs.txt 2>&1
python3 -m flowsr bench --train teacher-x4 --json $RUNS/bench-train.json > $RUNS/bench-train.txt 2>&1
fi

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
for F in $RUNS/eval-Set5.txt $RUNS/eval-Set5-ref-*.txt $RUNS/bench-b1.txt $RUNS/bench-b16-compile.txt $RUNS/bench-b1-graphs.txt \
         $RUNS/bench-train.txt; do [ -f $F ] && { echo "== $F"; grep -v "^\[" $F | tail -25; }; done
exit 0
