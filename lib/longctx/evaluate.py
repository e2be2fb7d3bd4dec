"""``python -m longctx.evaluate``: stage 4's command. The stage lives in :mod:`longctx.eval`."""

import sys

from .eval.stage import *  # noqa: F401,F403  (scripts written for the old single module)
from .eval.stage import main

if __name__ == "__main__":
    sys.exit(main())
