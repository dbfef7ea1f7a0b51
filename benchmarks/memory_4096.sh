#!/usr/bin/env bash
# Peak memory of `flowsr upscale` on a large input (default 4096x4096 -> 16384x16384), on the CPU:
# once with --model bicubic and once with a tiny random network (NetConfig(channels=16,
# channel_mult=(1,2), num_blocks=1, attention_levels=())), each under `/usr/bin/time -v`.
# Usage: bash benchmarks/memory_4096.sh [SIZE]     (env: PYTHON, OMP_NUM_THREADS, WORK=folder to keep)
# Needs GNU time (apt-get install time). Prints each run's "Maximum resident set size" and wall time.
set -euo pipefail
SIZE=${1:-4096}
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ ! -x /usr/bin/time ]; then echo "needs GNU time: apt-get install time" >&2; exit 1; fi
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
echo "work folder $WORK, input ${SIZE}x${SIZE}, OMP_NUM_THREADS=$OMP_NUM_THREADS"

"$PYTHON" - "$WORK" "$SIZE" <<'PY'
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flowsr.checkpoint import save_model_dir
from flowsr.config import ModelConfig
from flowsr.nets import NetConfig, UNet

work, size = Path(sys.argv[1]), int(sys.argv[2])
(work / "in").mkdir(exist_ok=True)
yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # smooth colour waves plus noise: a photo-like PNG
rng = np.random.default_rng(0)
planes = [np.sin(a * xx + b) * np.cos(c * yy) for a, b, c in rng.uniform(3, 40, (3, 3))]
image = (np.stack(planes, -1) + 1) * 110 + rng.normal(0, 8, (size, size, 3))
Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(work / "in" / f"big{size}.png")
net_cfg = NetConfig(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=())
torch.manual_seed(0)
save_model_dir(work / "tiny", UNet(net_cfg), ModelConfig(kind="flow", scale=4, net=net_cfg, default_steps=1))
PY

for MODEL in bicubic "$WORK/tiny"; do
  NAME=$(basename "$MODEL")
  rm -rf "$WORK/out-$NAME"
  /usr/bin/time -v -o "$WORK/time-$NAME.txt" \
    "$PYTHON" -m flowsr upscale "$WORK/in" -o "$WORK/out-$NAME" --model "$MODEL" --device cpu
  echo "== $NAME: $(grep 'Maximum resident set size' "$WORK/time-$NAME.txt" | sed 's/^[[:space:]]*//')," \
       "$(grep 'Elapsed (wall clock)' "$WORK/time-$NAME.txt" | sed 's/^[[:space:]]*//')"
  "$PYTHON" -c "import PIL.Image, sys; PIL.Image.MAX_IMAGE_PIXELS = None; im = PIL.Image.open(sys.argv[1]); print('   output', im.size, im.mode)" \
    "$WORK/out-$NAME/big$SIZE.png"
done
