#!/usr/bin/env bash
# Equal-budget CFG ablation of the MeanFlow student (issue 24: MFSR, arXiv 2603.20690, claims that distilling the
# teacher's guided velocity beats MeanFlow's own CFG). From one teacher and one start, with the same seed and the
# same wall time each, all side by side (each gets the same share of the machine):
#   w1       guidance=1: the teacher's conditional velocity, no guidance (the presets' since this ablation)
#   w1.5     teacher CFG: v_T(0) + 1.5 (v_T(c) - v_T(0)) distilled (the shipped meanflow-x4's)
#   w2.5     teacher CFG at 2.5
#   mf-w1.5  MeanFlow's own CFG (arXiv 2505.13447, Sec. 4.2 and its improved-CFG appendix): mf_target=conditional,
#            the data velocity x1 - x0 mixed with the student's own instantaneous velocities,
#            v~ = omega (x1 - x0) + kappa u(c) + (1 - omega - kappa) u(0), whose fixed point is the CFG field at
#            the effective scale omega / (1 - kappa). At 1.5 we take kappa = 0.5 (the mixing MeanFlow's B/2
#            setting uses), so omega = 1.5 (1 - 0.5) = 0.75; kappa > 0 makes it differ from plain CFG on the
#            data velocity. The teacher only gives this student its starting weights, network and start; its
#            target is the data, not the teacher. guidance=1 mf_student_states=0 undo the preset's teacher-target
#            settings (the config refuses them with mf_target=conditional); train.py records omega / (1 - kappa)
#            as teacher_guidance, the scale eval --reference compares against.
# Any wX or mf-wX in VARIANTS works (mf-wX: omega = X (1 - MF_KAPPA)). Evaluate with
# benchmarks/cfg_ablation_eval.sh, tabulate with benchmarks/cfg_ablation_report.py.
#
#   SIZE=gpu STUDENT_S=150 bash benchmarks/cfg_ablation.sh                                    # GPU (gpu_run.sh CFG_AB=1)
#   SIZE=tiny STUDENT_S=20 EXTRA="batch_size=2 crop=32" TEACHER=runs/tiny-teacher-pm bash benchmarks/cfg_ablation.sh
#
# TEACHER (default the shipped models/gpu-pm/bsrn-x4-s0.1/teacher); INIT=DIR continues every variant from the same
# MeanFlow student (default none: each starts as a copy of the teacher; a student distilled at one w favours that w);
# runs go to $RUNS/<variant>/, logs to $RUNS/<variant>.log.
set -u
RUNS=${RUNS:-runs/cfg-ab}
SIZE=${SIZE:-gpu}
STUDENT_S=${STUDENT_S:-150}
TEACHER=${TEACHER:-models/gpu-pm/bsrn-x4-s0.1/teacher}
INIT=${INIT:-}
VARIANTS=${VARIANTS:-"w1 w1.5 w2.5 mf-w1.5"}
MF_KAPPA=${MF_KAPPA:-0.5}
SEED=${SEED:-0}
EXTRA=${EXTRA:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
case $SIZE in
  tiny) M=tiny-meanflow-pm ;;
  gpu) M=meanflow-x4-pm ;;
  *) echo "SIZE must be tiny or gpu"; exit 2 ;;
esac
[ -f "$TEACHER/model.safetensors" ] || { echo "no teacher at $TEACHER"; exit 2; }
COMMON="teacher=$TEACHER seed=$SEED time_limit=$STUDENT_S max_steps=1000000 val_images=0 ${INIT:+init=$INIT} $EXTRA"
log() { echo "[$(date +%T)] $*"; }
# the overrides of one variant: wX (teacher CFG) or mf-wX (MeanFlow CFG at effective scale X)
recipe() {
  case $1 in
    w*) echo "guidance=${1#w}" ;;
    mf-w*) local X=${1#mf-w}
      echo "mf_target=conditional mf_kappa=$MF_KAPPA mf_omega=$(awk "BEGIN{print $X * (1 - $MF_KAPPA)}") guidance=1 mf_student_states=0" ;;
    *) echo "unknown variant $1 (wX or mf-wX)" >&2; return 1 ;;
  esac
}
for V in $VARIANTS; do recipe $V > /dev/null || exit 2; done
mkdir -p "$RUNS"

log "MeanFlow students ($M, teacher $TEACHER${INIT:+, init $INIT}) for ${STUDENT_S}s each, side by side: $VARIANTS"
for V in $VARIANTS; do
  log "$V: $(recipe $V)"
  python3 -m flowsr train --preset $M --out $RUNS/$V $(recipe $V) $COMMON > $RUNS/$V.log 2>&1 &
done
wait
for V in $VARIANTS; do tail -c 200 $RUNS/$V.log; echo; done
log "done: $(ls -d $RUNS/*/ 2>/dev/null | tr '\n' ' ')"
