"""``python -m qatmig_engine.cli``: the ``qatmig`` command (e.g. from a wrapper script)."""

import sys

from . import main

sys.exit(main())
