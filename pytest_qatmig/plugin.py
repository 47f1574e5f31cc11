"""pytest11 entry point ``qatmig``. Imports nothing heavy at load time."""

from __future__ import annotations
