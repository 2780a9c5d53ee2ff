"""``python -m rotary`` is the ``rotary`` command (so ``torchrun -m rotary train ...`` works)."""

import sys

from rotary.cli import main

sys.exit(main())
