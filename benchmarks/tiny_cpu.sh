#!/usr/bin/env bash
# The CPU figures of the README in one command: tiny teacher, regression, OFTSR and MeanFlow students,
# a tiny real-world teacher, their Set5 / RealSR evaluations and speed, all on this machine.
#   bash benchmarks/tiny_cpu.sh            (73 minutes of training time limits, then the evaluations:
#                                           the RealSR one alone took an hour on one thread here)
set -u
RUNS=${RUNS:-runs}
TEACHER_S=${TEACHER_S:-590}   # "trains on a CPU in under 10 minutes"
STUDENT_S=${STUDENT_S:-240}
OFTSR_S=${OFTSR_S:-1800}      # the bootstrap reaches t = 1 only after many steps (README)
REAL_S=${REAL_S:-1500}        # fine-tuned from the bicubic tiny teacher, as Real-ESRNet starts
SHARED=${SHARED:-../shared/data}
SET5=$SHARED/test/Set5/HR
M="psnr,ssim,hf,lpips"
train() { [ -f "$2/model.safetensors" ] || flowsr train --preset "$1" --out "$2" "${@:3}"; }
log() { echo "[$(date +%T)] $*"; }

log "training"
train tiny-teacher $RUNS/tiny-teacher time_limit=$TEACHER_S
train tiny-regression $RUNS/tiny-regression time_limit=$STUDENT_S
train tiny-oftsr $RUNS/tiny-oftsr teacher=$RUNS/tiny-teacher time_limit=$OFTSR_S max_steps=20000
train tiny-meanflow $RUNS/tiny-meanflow teacher=$RUNS/tiny-teacher guidance=1.5 time_limit=$STUDENT_S
train tiny-teacher-real $RUNS/tiny-teacher-real init=$RUNS/tiny-teacher lr=5e-4 time_limit=$REAL_S max_steps=20000

log "evaluation"
mkdir -p $RUNS/cpu
flowsr eval --model bicubic $RUNS/tiny-regression $RUNS/tiny-teacher --steps 1,4,16 --data $SET5 --metrics $M \
  --json $RUNS/cpu/eval-Set5-teacher.json
flowsr eval --model $RUNS/tiny-oftsr --t 0,0.25,0.5,0.75,1 --data $SET5 --metrics $M,dists \
  --json $RUNS/cpu/eval-Set5-oftsr.json
flowsr eval --model $RUNS/tiny-meanflow --t 0,0.5,1 --data $SET5 --metrics $M --json $RUNS/cpu/eval-Set5-meanflow.json
flowsr eval --model $RUNS/tiny-meanflow --steps 2,4 --data $SET5 --metrics $M --json $RUNS/cpu/eval-Set5-meanflow-steps.json
flowsr eval --model bicubic $RUNS/tiny-teacher $RUNS/tiny-teacher-real --steps 1,4 --data $SHARED/real/RealSR \
  --metrics psnr,ssim,lpips,dists,niqe --json $RUNS/cpu/eval-RealSR-tiny.json

log "speed"
flowsr bench --model bicubic $RUNS/tiny-teacher $RUNS/tiny-oftsr $RUNS/tiny-meanflow --steps 1,4,16 --size 256 \
  --repeat 5 --device cpu --compile none,default --json $RUNS/cpu/bench-tiny.json
flowsr bench --train tiny-teacher --json $RUNS/cpu/bench-train-tiny.json
python3 benchmarks/report_results.py $RUNS/cpu docs/cpu
