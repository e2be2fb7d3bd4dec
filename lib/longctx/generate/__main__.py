"""``python -m longctx.generate``: see :mod:`longctx.generate.stage`."""

import sys

from .stage import main

sys.exit(main())
