"""``python -m qatmig_engine.cli``: the ``qatmig`` command without its console script."""

import sys

from . import main

sys.exit(main())
