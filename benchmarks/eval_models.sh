#!/usr/bin/env bash
# The README's results tables for the x4 models, on this machine (CPU is fine: quality does not depend
# on the device; the s/image column then is CPU time): Set5, Set14, BSD100 (bicubic x4, synthetic
# protocol) and RealSR (paired). Metrics: PSNR/SSIM-Y, LPIPS, DISTS, HF ratio (+ NIQE on RealSR).
# Rows: bicubic, regression, teacher at 1/2/4/8/16/32 Euler steps (and 32 guided steps when the
# MeanFlow student was distilled with guidance), OFTSR at t = 0 ... 1, MeanFlow at 1/2/4 steps. Every
# student row also carries ref_psnr_y / ref_lpips against its teacher's 32-step output from the same
# source noise (--reference; guidance: the one the student was distilled with).
#
#   bash benchmarks/eval_models.sh                        # the bundled models
#   MODELS_DIR=runs SETS="Set5 Set14" RESULTS=runs/eval bash benchmarks/eval_models.sh   # runs/<name>
#   python3 benchmarks/report_results.py runs/eval runs/report  # tables + trade-off plots
#   FEW_NFE=1 bash benchmarks/eval_models.sh              # skip the 8/16/32-step teacher rows (CPU hours)
#   NO_REFERENCE=1 ...                                    # skip ref_psnr_y (32-96 teacher NFE per image)
#   PARTS="1 4 5" ... ; PARTS="2 3" ...                   # teacher rows while the students still train,
#                                                         # then the students' (parts: the numbered blocks)
set -u
SHARED=${SHARED:-../shared/data}
RESULTS=${RESULTS:-runs/eval}
SETS=${SETS:-Set5 Set14 BSD100 RealSR}
P=${MODELS_DIR:+$MODELS_DIR/}
REGRESSION=${REGRESSION:-${P}regression-x4}
TEACHER=${TEACHER:-${P}teacher-x4}
OFTSR=${OFTSR:-${P}oftsr-x4}
MEANFLOW=${MEANFLOW:-${P}meanflow-x4}
DEVICE=${DEVICE:-auto}
mkdir -p "$RESULTS"
log() { echo "[$(date +%T)] $*"; }
PARTS=${PARTS:-1 2 3 4 5}
part() { case " $PARTS " in *" $1 "*) return 0;; *) return 1;; esac; }
GUIDANCE=${GUIDANCE:-$(python3 -c "import flowsr; m = flowsr.load('$MEANFLOW'); print(m.config.training.get('teacher_guidance', 1.0))")}

for SET in $SETS; do
  if [ "$SET" = RealSR ]; then
    DATA=$SHARED/real/RealSR; METRICS=psnr,ssim,lpips,dists,hf,niqe
  else
    DATA=$SHARED/test/$SET/HR; METRICS=psnr,ssim,lpips,dists,hf
  fi
  E="flowsr eval --data $DATA --scale 4 --metrics $METRICS --device $DEVICE"
  log "$SET: parts $PARTS"
  part 1 && $E --model bicubic $REGRESSION $TEACHER --steps 1,2,4 --json "$RESULTS/$SET-1.json" | tail -n +2
  # OFTSR t sweep and MeanFlow 1/2/4 steps, each against its teacher's 32-step output
  REF="--reference $TEACHER"; [ -n "${NO_REFERENCE:-}" ] && REF=""
  part 2 && $E --model $OFTSR --t 0,0.25,0.5,0.75,1 $REF --json "$RESULTS/$SET-2.json" | tail -n +2
  part 3 && $E --model $MEANFLOW --steps 1,2,4 $REF --json "$RESULTS/$SET-3.json" | tail -n +2
  if [ -z "${FEW_NFE:-}" ]; then  # teacher 8/16/32 steps, and 4/32 guided steps (w=$GUIDANCE)
    part 4 && $E --model $TEACHER --steps 8,16,32 --json "$RESULTS/$SET-4.json" | tail -n +2
    [ "$GUIDANCE" != "1.0" ] && part 5 && $E --model $TEACHER --steps 4,32 --guidance $GUIDANCE \
      --json "$RESULTS/$SET-5.json" | tail -n +2
  fi
  python3 - "$RESULTS" "$SET" <<'PYEOF'
import json, sys
from pathlib import Path
results, name = Path(sys.argv[1]), sys.argv[2]
rows = []
for part in sorted(results.glob(f"{name}-[0-9].json")):
    rows += json.loads(part.read_text())["results"]
merged = {"dataset": rows[0]["dataset"], "protocol": rows[0]["protocol"], "results": rows}
(results / f"eval-{name}.json").write_text(json.dumps(merged, indent=2) + "\n")
print(f"wrote {results}/eval-{name}.json ({len(rows)} rows)")
PYEOF
done
