#!/usr/bin/env bash
# The whole GPU job in one call (issues 20 and 21), inside the device's 10-minute limit per command:
#   1. `flowsr bench --train teacher-x4-pm --objectives flow_matching,meanflow` (BENCH_S seconds at most):
#      crops/s, share of the measured bf16 matmul peak, MeanFlow's step against flow matching's, both training
#      paths (fast=false vs the fast path);
#   2. the equal-budget start A/B (benchmarks/start_ab.sh at GPU size): one teacher per variant (bicubic
#      start, BSRN start at sigma_p 0.1 and 0.2, RLFN start), all side by side, then an OFTSR and a MeanFlow
#      student per variant, all side by side;
#   2b. with CFG_AB=1 (issue 24), the equal-budget CFG ablation (benchmarks/cfg_ablation.sh): MeanFlow students
#      w1, w1.5, w2.5 (teacher CFG) and mf-w1.5 (MeanFlow's own CFG) from CFG_TEACHER (default the shipped
#      models/gpu-pm/bsrn-x4-s0.1/teacher; CFG_INIT=DIR continues each from one student), STUDENT_S each, side by
#      side, into $RUNS/cfg/<variant>/; skipped when less than STUDENT_S + 90 s is left before the deadline;
#   3. a quick Set5 check (PSNR-Y, HF ratio) and the one-step inference bench at 512^2, batch 16;
#   4. bf16 weights (tars of three models, each under the 16 MiB a returned file may have) and every
#      log and config in $OUT/results.tar.gz.
# A deadline (DEADLINE seconds from the start) skips what would not fit, so the packing always runs.
# LPIPS, DISTS and the big test sets are computed afterwards on the CPU (benchmarks/start_ab_eval.sh).
#
#   bash benchmarks/gpu_stash.sh stash && bash benchmarks/gpu_prepare.sh   # here: every training image into .gpudata/
#   (after the call: bash benchmarks/gpu_stash.sh restore)
#   device run (carry .gpudata):  bash benchmarks/gpu_run.sh
#   back here:  python3 benchmarks/gpu_unpack.py FILES_AT runs/gpu-ab   # model directories
#   CPU dry run: SIZE=tiny TEACHER_S=20 STUDENT_S=15 EXTRA="batch_size=2 crop=32" SKIP_BENCH=1 \
#                OUT=/tmp/gpuout RUNS=/tmp/gpuruns bash benchmarks/gpu_run.sh
# The CFG ablation alone (PHASES=none skips the start A/B):
#   device run: CFG_AB=1 PHASES=none SKIP_BENCH=1 STUDENT_S=300 bash benchmarks/gpu_run.sh
#   back here:  python3 benchmarks/gpu_unpack.py FILES_AT runs/gpu-cfg   # students in runs/gpu-cfg/cfg/<variant>/,
#               their logs in runs/gpu-cfg/<variant>.log; then RUNS=runs/gpu-cfg/cfg benchmarks/cfg_ablation_eval.sh
#   CPU dry run: CFG_AB=1 PHASES=none SIZE=tiny STUDENT_S=15 EXTRA="batch_size=2 crop=32" SKIP_BENCH=1 \
#                CFG_TEACHER=runs/tiny-teacher-pm OUT=/tmp/gpuout RUNS=/tmp/gpuruns bash benchmarks/gpu_run.sh
set -u
BEGIN=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export FLOWSR_CACHE=${FLOWSR_CACHE:-off}  # start images: computed on the GPU in each run, not written as PNGs
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUNS=${RUNS:-runs/gpu-ab}; mkdir -p "$RUNS"
SIZE=${SIZE:-gpu}
BENCH_PRESET=$([ "$SIZE" = tiny ] && echo tiny-teacher-pm || echo teacher-x4-pm)
DEADLINE=${DEADLINE:-540}        # seconds after which only the packing runs
TEACHER_S=${TEACHER_S:-150}
STUDENT_S=${STUDENT_S:-150}
# The start A/B of 2026-12-04 (four variants side by side: docs/start-networks.md) chose BSRN, sigma_p 0.1; its
# models are in models/gpu-pm/ and each run continues them (init=). VARIANTS="bicubic:0.2 bsrn-x4:0.1
# bsrn-x4:0.2 rlfn-x4:0.1" INIT_FROM= repeats the A/B. Processes sharing the GPU slow each other down
# (8 students side by side ran at 4.5 steps/s each): fewer variants train more.
VARIANTS=${VARIANTS:-"bsrn-x4:0.1"}
export INIT_FROM=${INIT_FROM-models/gpu-pm}
EXTRA=${EXTRA:-}
DATA=${DATA:-.gpudata/train}
log() { echo "[$(date +%T) +$(( $(date +%s) - BEGIN ))s] $*"; }
left() { echo $(( DEADLINE - ($(date +%s) - BEGIN) )); }

log "machine: $(python3 -c 'import torch;print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
log "data: $(cat .gpudata/train.txt 2>/dev/null || ls $DATA | wc -l)"
if [ -z "${SKIP_BENCH:-}" ]; then
  # flow matching and MeanFlow (R2: the MeanFlow step against the flow-matching step), old and fast path, real
  # short runs on 32 training images (each run computes their start images; the whole set's took over 60 s)
  log "phase 1: training throughput: bench --train $BENCH_PRESET, flow matching and MeanFlow, both paths"
  BENCH_DATA=${TMPDIR:-/tmp}/flowsr-bench-data; rm -rf $BENCH_DATA; mkdir -p $BENCH_DATA
  for F in $(ls $DATA | head -32); do ln -sf "$(cd $DATA && pwd)/$F" $BENCH_DATA/$F; done
  timeout ${BENCH_S:-150} python3 -m flowsr bench --train $BENCH_PRESET --objectives flow_matching,meanflow \
    --data $BENCH_DATA --json $RUNS/bench-train.json > $RUNS/bench-train.txt 2>&1
  tail -n 6 $RUNS/bench-train.txt
fi
log "phase 2: start A/B, teachers ${TEACHER_S}s, students ${STUDENT_S}s"
RUNS=$RUNS SIZE=$SIZE TEACHER_S=$TEACHER_S STUDENT_S=$STUDENT_S VARIANTS="$VARIANTS" \
  STUDENT_EXTRA="${STUDENT_EXTRA:-compile=false}" EXTRA="data=$DATA ckpt_every=1000 log_every=100 $EXTRA" timeout $(( $(left) - 20 )) bash benchmarks/start_ab.sh
if [ -n "${CFG_AB:-}" ]; then
  if [ "$(left)" -gt $(( STUDENT_S + 90 )) ]; then
    log "phase 2b: CFG ablation, MeanFlow students ${STUDENT_S}s each"
    RUNS=$RUNS/cfg SIZE=$SIZE STUDENT_S=$STUDENT_S TEACHER=${CFG_TEACHER:-models/gpu-pm/bsrn-x4-s0.1/teacher} \
      INIT=${CFG_INIT:-} VARIANTS="${CFG_VARIANTS:-w1 w1.5 w2.5 mf-w1.5}" \
      EXTRA="data=$DATA ckpt_every=1000 log_every=100 $EXTRA ${STUDENT_EXTRA:-compile=false}" \
      timeout $(( $(left) - 20 )) bash benchmarks/cfg_ablation.sh
  else
    log "phase 2b skipped: $(left)s left, the CFG ablation needs STUDENT_S + 90 = $(( STUDENT_S + 90 ))s"
  fi
fi
MODELS=$(ls -d $RUNS/*-s*/*/ ${CFG_AB:+$RUNS/cfg/*/} 2>/dev/null | while read D; do [ -f $D/model.safetensors ] && echo ${D%/}; done)
if [ "$(left)" -gt 60 ] && [ -n "$MODELS" ]; then
  log "phase 3: Set5 check"
  timeout $(( $(left) - 40 )) python3 -m flowsr eval --model bsrn-x4 rlfn-x4 $MODELS --data .gpudata/Set5 --scale 4 \
    --steps 1,4 --t 0,1 --metrics psnr,ssim,hf --json $RUNS/eval-Set5.json > $RUNS/eval-Set5.txt 2>&1
fi
ONE_STEP=$(ls -d $RUNS/bsrn-x4-s0.1/oftsr 2>/dev/null)
if [ -z "${SKIP_BENCH:-}" ] && [ "$(left)" -gt 45 ] && [ -n "$ONE_STEP" ]; then
  log "phase 3b: one-step inference at 512^2, batch 16 (the settings upscale --device cuda uses)"
  timeout $(( $(left) - 25 )) python3 -m flowsr bench --model bsrn-x4 $ONE_STEP --size 512 --batch 16 --repeat 10 \
    --matmul --json $RUNS/bench-infer.json > $RUNS/bench-infer.txt 2>&1
fi

log "packing"
python3 - "$OUT" $MODELS <<'PY'
import io, sys, tarfile, torch
from pathlib import Path
from safetensors.torch import load_file, save
out, models = Path(sys.argv[1]), sys.argv[2:]
for index in range(0, len(models), 3):  # three bf16 models a tar: each under 16 MiB
    with tarfile.open(out / f"weights{index // 3}.tar", "w") as archive:
        for model in models[index:index + 3]:
            state = load_file(f"{model}/model.safetensors")
            data = save({k: v.to(torch.bfloat16) for k, v in state.items()})
            info = tarfile.TarInfo(f"{model}/model.safetensors")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
PY
tar czf "$OUT/results.tar.gz" $RUNS/*.json $RUNS/*.txt $RUNS/*.log $RUNS/*/*/config.json $RUNS/*/*/log.jsonl \
  $RUNS/*/*/train_config.json ${CFG_AB:+$RUNS/cfg/*.log} 2>/dev/null
ls -la "$OUT"
for F in $RUNS/bench-train.txt $RUNS/eval-Set5.txt $RUNS/bench-infer.txt; do  # the short table, last
  [ -f $F ] && { echo "== $F"; grep -v "^\[" $F | tail -40; }
done
log "end"
exit 0
