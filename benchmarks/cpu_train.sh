#!/usr/bin/env bash
# The CPU models of issue 14, trained on this 2-core CPU: teacher and regression baseline side by
# side with the same wall time (one thread each), then the OFTSR and MeanFlow students side by side.
#
#   bash benchmarks/cpu_train.sh                      # from scratch: TEACHER_S=3300 STUDENT_S=2400
#   INIT=1 bash benchmarks/cpu_train.sh               # continue models/cpu/* and regression-x4 (init=; totals kept)
#   python3 benchmarks/ship_models.py runs/regression=regression-x4        # after measuring (README)
#   python3 benchmarks/ship_models.py runs/teacher=tiny-teacher runs/oftsr=tiny-oftsr runs/meanflow=tiny-meanflow --dest models/cpu --bf16
#
# Background runs end when the session does: TEACHER_S + STUDENT_S must fit in what is left of it.
set -eu
RUNS=${RUNS:-runs}
TEACHER_S=${TEACHER_S:-3300}
STUDENT_S=${STUDENT_S:-2400}
GUIDANCE=${GUIDANCE:-1.5}          # teacher CFG scale the MeanFlow student distils (MFSR)
STATES=${STATES:-0.5}              # MeanFlow: share of rows at the student's own (guided) states
export OMP_NUM_THREADS=1
COMMON="max_steps=1000000"
I_T=""; I_R=""; I_O=""; I_M=""
[ -n "${INIT:-}" ] && { I_T="init=models/cpu/tiny-teacher"; I_R="init=regression-x4"; I_O="init=models/cpu/tiny-oftsr"
                    I_M="init=models/cpu/tiny-meanflow"; }
log() { echo "[$(date +%T)] $*"; }

log "teacher + regression, ${TEACHER_S}s each, side by side"
python3 -m flowsr train --preset tiny-teacher --out $RUNS/teacher $COMMON time_limit=$TEACHER_S $I_T > $RUNS/teacher.out 2>&1 &
python3 -m flowsr train --preset tiny-regression --out $RUNS/regression $COMMON time_limit=$TEACHER_S $I_R > $RUNS/regression.out 2>&1 &
wait
log "OFTSR + MeanFlow (guidance $GUIDANCE) from the teacher, ${STUDENT_S}s each, side by side"
python3 -m flowsr train --preset tiny-oftsr --out $RUNS/oftsr teacher=$RUNS/teacher $COMMON time_limit=$STUDENT_S \
  $I_O > $RUNS/oftsr.out 2>&1 &
python3 -m flowsr train --preset tiny-meanflow --out $RUNS/meanflow teacher=$RUNS/teacher guidance=$GUIDANCE \
  mf_student_states=$STATES $COMMON time_limit=$STUDENT_S $I_M > $RUNS/meanflow.out 2>&1 &
wait
log "done"; grep -h val_psnr $RUNS/{teacher,regression,oftsr,meanflow}/log.jsonl | tail -n 4
