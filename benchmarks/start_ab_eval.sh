#!/usr/bin/env bash
# Evaluate the start A/B (benchmarks/start_ab.sh) on the CPU: for every variant under $RUNS, the teacher at
# 1/2/4/8/32 Euler steps, OFTSR at t = 0, 0.5, 1 and MeanFlow at 1/2/4 steps, the students also scored
# against their own teacher's 32-step output from the same noise (ref_psnr_y; MeanFlow: at the guidance it
# distilled), plus bicubic and each start network alone. Then the JSON + Markdown table:
#
#   RUNS=runs/gpu-ab RESULTS=runs/gpu-ab/eval bash benchmarks/start_ab_eval.sh
#   python3 benchmarks/start_ab_report.py runs/gpu-ab/eval docs/start_ab   # start_ab.json + start_ab.md
#
# SETS (default Set5 Set14 BSD100), METRICS (default psnr,ssim,lpips,dists,hf), LIMIT=N: the first N images of
# each set only (stated in the table), NO_REFERENCE=1 skips ref_psnr_y, TEACHER_STEPS (default 1,2,4,8,32).
set -u
SHARED=${SHARED:-../shared/data}
RUNS=${RUNS:-runs/gpu-ab}
RESULTS=${RESULTS:-$RUNS/eval}
SETS=${SETS:-Set5 Set14 BSD100}
METRICS=${METRICS:-psnr,ssim,lpips,dists,hf}
TEACHER_STEPS=${TEACHER_STEPS:-1,2,4,8,32}
mkdir -p "$RESULTS"
log() { echo "[$(date +%T)] $*"; }
. "$(dirname "$0")/eval_sets.sh"
for SET in $SETS; do
  E="python3 -m flowsr eval --data $(test_set $SET) --scale 4 --metrics $METRICS"
  log "$SET: bicubic and the start networks"
  [ -f "$RESULTS/$SET-starts.json" ] || $E --model bicubic bsrn-x4 rlfn-x4 --json "$RESULTS/$SET-starts.json" | tail -n +2
  for D in "$RUNS"/*/; do
    V=$(basename "$D"); [ -f "$D/teacher/model.safetensors" ] || continue
    REF="--reference $D/teacher"; [ -n "${NO_REFERENCE:-}" ] && REF=""
    log "$SET: $V"
    [ -f "$RESULTS/$SET-$V-teacher.json" ] || $E --model "$D/teacher" --steps "$TEACHER_STEPS" \
      --json "$RESULTS/$SET-$V-teacher.json" | tail -n +2
    [ -f "$D/oftsr/model.safetensors" ] && { [ -f "$RESULTS/$SET-$V-oftsr.json" ] || $E --model "$D/oftsr" \
      --t 0,0.5,1 $REF --json "$RESULTS/$SET-$V-oftsr.json" | tail -n +2; }
    [ -f "$D/meanflow/model.safetensors" ] && { [ -f "$RESULTS/$SET-$V-meanflow.json" ] || $E --model "$D/meanflow" \
      --steps 1,2,4 $REF --json "$RESULTS/$SET-$V-meanflow.json" | tail -n +2; }
  done
done
log "done: $RESULTS"
