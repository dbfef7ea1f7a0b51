#!/usr/bin/env bash
# MeanFlow recipe A/B at an equal budget (issue 14): the same teacher, the same steps and seed, one
# setting changed; each student scored on Set5 against the ground truth and against its guided teacher's
# 32-step output from the same noise (ref_psnr_y), at 1, 2 and 4 steps.
#
#   TEACHER=runs/teacher STEPS=600 bash benchmarks/meanflow_ab.sh "mf_student_states=0" "mf_student_states=0.5"
#
# Writes runs/meanflow_ab/<setting>/ and runs/meanflow_ab/eval-<setting>.json; prints one table per setting.
set -eu
TEACHER=${TEACHER:-runs/teacher}
STEPS=${STEPS:-600}
GUIDANCE=${GUIDANCE:-1.5}
OUT=${OUT:-runs/meanflow_ab}
SET5=${SET5:-../shared/data/test/Set5/HR}
mkdir -p "$OUT"
for SETTING in "$@"; do
  RUN="$OUT/${SETTING//[^A-Za-z0-9_.=-]/_}"
  [ -f "$RUN/model.safetensors" ] || flowsr train --preset tiny-meanflow --out "$RUN" teacher="$TEACHER" \
    guidance="$GUIDANCE" max_steps="$STEPS" val_images=0 ckpt_every="$STEPS" $SETTING > "$RUN.log" 2>&1
  echo "== $SETTING"
  flowsr eval --model "$RUN" --data "$SET5" --steps 1,2,4 --metrics psnr,lpips,hf --reference "$TEACHER" \
    --json "$OUT/eval-$(basename "$RUN").json" | tail -n +2
done
