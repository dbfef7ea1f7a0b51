#!/usr/bin/env bash
# Copy what the GPU job needs into the git-ignored .gpudata/ (carried to the device machine), within
# the device's 64 MiB limit on everything that travels (tracked files, the bundled weights included,
# plus what is carried):
#   .gpudata/Set5        HR images for a quick PSNR check on the device
#   .gpudata/train       T91, then BSDS400 images in sorted order until the budget is used
#   .gpudata/init/regression-x4   the last GPU run's regression baseline (runs/gpu*/models), if any
# LPIPS, DISTS, NIQE and the large test sets are evaluated here on the CPU afterwards
# (benchmarks/eval_models.sh): their weights and images do not fit beside the training data.
set -euo pipefail
SHARED=${SHARED:-../shared/data}
LIMIT=$((64 * 1024 * 1024))
MARGIN=$((1024 * 1024))
rm -rf .gpudata && mkdir -p .gpudata/train .gpudata/init
cp -r "$SHARED/test/Set5/HR" .gpudata/Set5
# the regression baseline to continue from (init=); the bundled models are found by name
REGRESSION=$(ls -d runs/gpu*/models/regression-x4 2>/dev/null | sort | tail -1 || true)
[ -n "$REGRESSION" ] && cp -r "$REGRESSION" .gpudata/init/regression-x4
tracked=$( (git ls-files -z | xargs -0 du -cb 2>/dev/null || true) | tail -1 | cut -f1)  # files present (a stashed one does not travel)
used=$(du -sb .gpudata | cut -f1)
budget=$((LIMIT - MARGIN - tracked - used))
taken=0; count=0
for f in $(ls "$SHARED"/train/T91/* | sort) $(ls "$SHARED"/train/BSDS400/* | sort); do
  size=$(stat -c %s "$f")
  [ $((taken + size)) -gt $budget ] && break
  cp "$f" ".gpudata/train/$(basename "$(dirname "$f")")_$(basename "$f")"
  taken=$((taken + size)); count=$((count + 1))
done
total=$(find "$SHARED/train" -type f | wc -l)
echo "$count of $total training images ($((taken / 1048576)) MiB); tracked $((tracked / 1048576)) MiB;" \
     "carry .gpudata: $(du -sbL .gpudata | cut -f1 | awk '{printf "%.1f MiB", $1 / 1048576}')"
echo "$count of $total images of $SHARED/train (T91 first, then BSDS400 sorted)" > .gpudata/train.txt
