#!/usr/bin/env bash
# The README's results tables for the x4 models, on this machine (CPU is fine: quality does not depend
# on the device; the s/image column then is CPU time): Set5, Set14, BSD100 (bicubic x4, synthetic
# protocol) and RealSR (paired), PSNR/SSIM-Y, LPIPS, DISTS (+ NIQE on RealSR), rows: bicubic,
# regression, teacher at 1/4/16/32 Euler steps, OFTSR at t = 0, 0.5, 1, MeanFlow at 1/2/4 steps.
#
#   bash benchmarks/eval_models.sh                       # bundled models + the last GPU regression run
#   MODELS="runs/teacher-x4 ..." SETS="Set5 Set14" RESULTS=runs/eval bash benchmarks/eval_models.sh
#   python3 benchmarks/report_results.py runs/eval docs/gpu    # tables + trade-off plots
#   FEW_NFE=1 bash benchmarks/eval_models.sh              # skip the 16/32-step teacher rows (CPU hours)
set -u
SHARED=${SHARED:-../shared/data}
RESULTS=${RESULTS:-runs/eval}
SETS=${SETS:-Set5 Set14 BSD100 RealSR}
REGRESSION=${REGRESSION:-$(ls -d runs/gpu*/models/regression-x4 2>/dev/null | sort | tail -1)}
TEACHER=${TEACHER:-teacher-x4}
OFTSR=${OFTSR:-oftsr-x4}
MEANFLOW=${MEANFLOW:-meanflow-x4}
DEVICE=${DEVICE:-auto}
mkdir -p "$RESULTS"
log() { echo "[$(date +%T)] $*"; }

for SET in $SETS; do
  if [ "$SET" = RealSR ]; then
    DATA=$SHARED/real/RealSR; METRICS=psnr,ssim,lpips,dists,niqe
  else
    DATA=$SHARED/test/$SET/HR; METRICS=psnr,ssim,lpips,dists
  fi
  E="flowsr eval --data $DATA --scale 4 --metrics $METRICS --device $DEVICE"
  log "$SET: one-step rows"
  $E --model bicubic $REGRESSION $OFTSR --t 0,0.5,1 --json "$RESULTS/$SET-1.json" | tail -n +2
  log "$SET: teacher 1/4 steps, MeanFlow 1/2/4 steps"
  $E --model $TEACHER --steps 1,4 --json "$RESULTS/$SET-2.json" | tail -n +2
  $E --model $MEANFLOW --steps 1,2,4 --json "$RESULTS/$SET-3.json" | tail -n +2
  if [ -z "${FEW_NFE:-}" ]; then
    log "$SET: teacher 16/32 steps"
    $E --model $TEACHER --steps 16,32 --json "$RESULTS/$SET-4.json" | tail -n +2
  fi
  python3 - "$RESULTS" "$SET" <<'EOF'
import json, sys
from pathlib import Path
results, name = Path(sys.argv[1]), sys.argv[2]
rows = []
for part in sorted(results.glob(f"{name}-[0-9].json")):
    data = json.loads(part.read_text())
    rows += data["results"] if "results" in data else [data]
merged = {"dataset": rows[0]["dataset"], "protocol": rows[0]["protocol"], "results": rows}
(results / f"eval-{name}.json").write_text(json.dumps(merged, indent=2) + "\n")
print(f"wrote {results}/eval-{name}.json ({len(rows)} rows)")
EOF
done
