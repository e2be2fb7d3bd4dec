"""``python -m longctx.train`` and ``torchrun ... -m longctx.train``: see :mod:`longctx.train.stage`."""

import sys

from .stage import main

sys.exit(main())
