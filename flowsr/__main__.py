"""``python -m flowsr`` (also what ``torchrun -m flowsr train ...`` runs)."""

import sys

from flowsr.cli import main

sys.exit(main())
