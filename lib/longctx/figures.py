"""``python -m longctx.figures``: the paper's figures. The code lives in :mod:`longctx.eval.figures`."""

import sys

from .eval.figures import *  # noqa: F401,F403  (scripts written for the old single module)
from .eval.figures import main

if __name__ == "__main__":
    sys.exit(main())
