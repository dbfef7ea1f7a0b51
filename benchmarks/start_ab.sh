#!/usr/bin/env bash
# Equal-budget A/B of the flow's start (issue 20): for each variant (start network and sigma_p), a teacher,
# then an OFTSR and a MeanFlow student from it, every variant with the same flow network, the same wall
# time and the same seed; all teachers train side by side, then all students side by side (so each
# variant gets the same share of the machine). Evaluate with benchmarks/start_ab_eval.sh.
#
#   SIZE=tiny TEACHER_S=2400 STUDENT_S=1800 VARIANTS="bsrn-x4:0.1 rlfn-x4:0.1" bash benchmarks/start_ab.sh  # CPU
#   SIZE=gpu  TEACHER_S=240  STUDENT_S=180  bash benchmarks/start_ab.sh                                     # GPU
#
# VARIANTS: start:sigma_p pairs (start = bicubic or a start network); runs go to $RUNS/<start>-s<sigma_p>/.
# PHASES=teacher or PHASES=student runs one phase; INIT_FROM=DIR continues each variant from DIR/<variant>/ (init=).
set -u
RUNS=${RUNS:-runs/ab}
SIZE=${SIZE:-tiny}
TEACHER_S=${TEACHER_S:-2400}
STUDENT_S=${STUDENT_S:-1800}
VARIANTS=${VARIANTS:-"bicubic:0.2 bsrn-x4:0.1 rlfn-x4:0.1"}
PHASES=${PHASES:-"teacher student"}
GUIDANCE=${GUIDANCE:-1.5}
EXTRA=${EXTRA:-}
TEACHER_EXTRA=${TEACHER_EXTRA:-}   # overrides for the teachers only, e.g. compile=true
STUDENT_EXTRA=${STUDENT_EXTRA:-}   # and for the students only
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
case $SIZE in
  tiny) T=tiny-teacher-pm; O=tiny-oftsr-pm; M=tiny-meanflow-pm ;;
  gpu) T=teacher-x4-pm; O=oftsr-x4-pm; M=meanflow-x4-pm ;;
  *) echo "SIZE must be tiny or gpu"; exit 2 ;;
esac
COMMON="max_steps=1000000 val_images=0 $EXTRA"
log() { echo "[$(date +%T)] $*"; }
name() { echo "${1%%:*}-s${1##*:}"; }
init() { [ -n "${INIT_FROM:-}" ] && [ -f "$INIT_FROM/$1/model.safetensors" ] && echo "init=$INIT_FROM/$1"; }
mkdir -p "$RUNS"

if [[ " $PHASES " == *" teacher "* ]]; then
  log "teachers ($T) for ${TEACHER_S}s each, side by side: $VARIANTS"
  for V in $VARIANTS; do
    D=$RUNS/$(name $V)
    python3 -m flowsr train --preset $T --out $D/teacher start=${V%%:*} sigma_p=${V##*:} time_limit=$TEACHER_S \
      $COMMON $TEACHER_EXTRA $(init $(name $V)/teacher) > $D-teacher.log 2>&1 &
  done
  wait
  for V in $VARIANTS; do tail -c 200 $RUNS/$(name $V)-teacher.log; echo; done
fi
if [[ " $PHASES " == *" student "* ]]; then
  log "students ($O, $M guidance $GUIDANCE) for ${STUDENT_S}s each, side by side"
  for V in $VARIANTS; do
    D=$RUNS/$(name $V)
    python3 -m flowsr train --preset $O --out $D/oftsr teacher=$D/teacher time_limit=$STUDENT_S $COMMON \
      $STUDENT_EXTRA $(init $(name $V)/oftsr) > $D-oftsr.log 2>&1 &
    python3 -m flowsr train --preset $M --out $D/meanflow teacher=$D/teacher guidance=$GUIDANCE \
      time_limit=$STUDENT_S $COMMON $STUDENT_EXTRA $(init $(name $V)/meanflow) > $D-meanflow.log 2>&1 &
  done
  wait
  for V in $VARIANTS; do for S in oftsr meanflow; do tail -c 200 $RUNS/$(name $V)-$S.log; echo; done; done
fi
log "done: $(ls -d $RUNS/*/ 2>/dev/null | tr '\n' ' ')"
