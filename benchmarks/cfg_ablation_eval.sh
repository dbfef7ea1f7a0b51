#!/usr/bin/env bash
# Evaluate the CFG ablation (benchmarks/cfg_ablation.sh) on the CPU: the teacher at each guidance of TEACHER_W at
# TEACHER_STEPS Euler steps (its REFERENCE_STEPS row is the ceiling each student copies), and every student under
# $RUNS at 1/2/4 steps, also scored against the teacher's REFERENCE_STEPS-step output from the same noise at the
# scale the student distilled (ref_psnr_y): guidance for a teacher-CFG student, omega / (1 - kappa) for MeanFlow's
# own CFG, read from its train_config.json and passed as --reference-guidance (eval's default, the recorded
# teacher_guidance, is checked against it). Then the JSON + Markdown table:
#
#   RUNS=runs/cfg-ab RESULTS=runs/cfg-ab/eval bash benchmarks/cfg_ablation_eval.sh
#   python3 benchmarks/cfg_ablation_report.py runs/cfg-ab/eval docs/cfg_ablation   # cfg_ablation.json + .md
#
# TEACHER (default models/gpu-pm/bsrn-x4-s0.1/teacher: the one the students were distilled from), SETS (default
# Set5 Set14 BSD100), METRICS (default psnr,ssim,lpips,dists,hf), LIMIT=N: the first N images of each set only
# (stated in the table), NO_REFERENCE=1 skips ref_psnr_y, TEACHER_W (default "1 1.5 2.5"; "" none), TEACHER_STEPS
# (default 1,2,4,32), REFERENCE_STEPS (default 32: the teacher's Euler steps that ref_psnr_y compares against; on a
# CPU 8 costs a quarter). Results already in $RESULTS are kept (delete a file to redo it).
set -u
SHARED=${SHARED:-../shared/data}
RUNS=${RUNS:-runs/cfg-ab}
RESULTS=${RESULTS:-$RUNS/eval}
TEACHER=${TEACHER:-models/gpu-pm/bsrn-x4-s0.1/teacher}
SETS=${SETS:-Set5 Set14 BSD100}
METRICS=${METRICS:-psnr,ssim,lpips,dists,hf}
TEACHER_W=${TEACHER_W-1 1.5 2.5}
TEACHER_STEPS=${TEACHER_STEPS:-1,2,4,32}
REFERENCE_STEPS=${REFERENCE_STEPS:-32}
mkdir -p "$RESULTS"
log() { echo "[$(date +%T)] $*"; }
. "$(dirname "$0")/eval_sets.sh"
# the scale a student distilled: "W" (for --reference-guidance), with a warning on stderr when its record disagrees
distilled_w() {
  python3 - "$1" "$TEACHER" <<'PY'
import json, sys
from pathlib import Path
run, teacher = Path(sys.argv[1]), sys.argv[2]
cfg = json.loads((run / "train_config.json").read_text())
w = cfg["mf_omega"] / (1 - cfg["mf_kappa"]) if cfg["mf_target"] == "conditional" else cfg["guidance"]
training = json.loads((run / "config.json").read_text()).get("training", {})
if abs(training.get("teacher_guidance", 1.0) - w) > 1e-6:
    print(f"{run}: teacher_guidance {training.get('teacher_guidance')} recorded, {w:g} distilled", file=sys.stderr)
if cfg["teacher"] != teacher:
    print(f"{run}: distilled from {cfg['teacher']}, evaluated against {teacher}", file=sys.stderr)
print(f"{w:g}")
PY
}
for SET in $SETS; do
  E="python3 -m flowsr eval --data $(test_set $SET) --scale 4 --metrics $METRICS"
  for W in $TEACHER_W; do
    log "$SET: teacher at guidance $W"
    [ -f "$RESULTS/$SET-teacher-w$W.json" ] || $E --model "$TEACHER" --steps "$TEACHER_STEPS" --guidance $W \
      --json "$RESULTS/$SET-teacher-w$W.json" | tail -n +2
  done
  for D in "$RUNS"/*/; do
    V=$(basename "$D"); [ -f "$D/model.safetensors" ] && [ -f "$D/train_config.json" ] || continue
    W=$(distilled_w "$D") || continue
    REF="--reference $TEACHER --reference-steps $REFERENCE_STEPS --reference-guidance $W"
    [ -n "${NO_REFERENCE:-}" ] && REF=""
    log "$SET: $V (distilled at $W)"
    [ -f "$RESULTS/$SET-$V.json" ] || $E --model "$D" --steps 1,2,4 $REF --json "$RESULTS/$SET-$V.json" | tail -n +2
  done
done
log "done: $RESULTS"
