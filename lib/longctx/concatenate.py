"""``python -m longctx.concatenate``: stage 2's command. The stage lives in :mod:`longctx.concat`."""

import sys

from .concat.stage import *  # noqa: F401,F403  (scripts written for the old single module)
from .concat.stage import main

if __name__ == "__main__":
    sys.exit(main())
