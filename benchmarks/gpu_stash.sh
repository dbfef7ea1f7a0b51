#!/usr/bin/env bash
# The device call carries the working tree (tracked files too) within 64 MiB. The GPU job needs none of the
# large model weights that are tracked (the old bundled U-Nets, models/): move them out of the tree before the
# call so that every training image fits in .gpudata, and put them back after it.
#
#   bash benchmarks/gpu_stash.sh stash && bash benchmarks/gpu_prepare.sh   # before the device call
#   bash benchmarks/gpu_stash.sh restore                                  # after it (git status: clean)
set -euo pipefail
STASH=${STASH:-/tmp/flowsr-gpu-stash}
case "${1:-}" in
  stash)
    git ls-files '*.safetensors' | while read -r f; do
      case "$f" in flowsr/weights/bsrn-x4/*|flowsr/weights/rlfn-x4/*|models/gpu-pm/*) continue ;; esac  # the job's
      mkdir -p "$STASH/$(dirname "$f")" && mv "$f" "$STASH/$f"
    done
    echo "stashed in $STASH: $(find "$STASH" -type f | wc -l) files" ;;
  restore)
    (cd "$STASH" && find . -type f) | while read -r f; do mkdir -p "$(dirname "$f")"; mv "$STASH/$f" "$f"; done
    git status --short | head ;;
  *) echo "usage: $0 stash|restore"; exit 2 ;;
esac
