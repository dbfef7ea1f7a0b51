"""Exit 0 when a bundled model has the network of its full-size preset (so ``init=`` may continue it).

    python benchmarks/same_recipe.py teacher-x4

``init=`` copies the init model's network, so continuing a bundled CPU-sized model on a GPU would keep
training the small network; ``benchmarks/gpu_run.sh`` refuses INIT=1 then.
"""

import sys
from dataclasses import asdict

from flowsr.checkpoint import load_model_dir
from flowsr.config import preset
from flowsr.pipeline import bundled_models

name = sys.argv[1]
_, config = load_model_dir(bundled_models()[name], "meta")
want, have = asdict(preset(name).net), asdict(config.net)
diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
if diff:
    print(f"{name}: bundled network differs from the {name} preset (have, want): {diff}; train from scratch")
    sys.exit(1)
