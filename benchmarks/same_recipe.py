"""Exit 0 when bundled models have the networks of their full-size presets (so ``init=`` may continue them).

    python benchmarks/same_recipe.py teacher-x4 regression-x4 oftsr-x4 meanflow-x4

``init=`` copies the init model's network, so continuing a bundled CPU-sized model on a GPU would keep
training the small network; ``benchmarks/gpu_run.sh`` refuses INIT=1 then.
"""

import sys
from dataclasses import asdict

from flowsr.checkpoint import load_model_dir
from flowsr.config import preset
from flowsr.pipeline import bundled_models

failed = False
for name in sys.argv[1:]:
    _, config = load_model_dir(bundled_models()[name], "meta")
    want, have = asdict(preset(name).net), asdict(config.net)
    diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    if diff:
        print(f"{name}: bundled network differs from the {name} preset (have, want): {diff}; train from scratch")
        failed = True
sys.exit(1 if failed else 0)
