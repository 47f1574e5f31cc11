"""pytest-qatmig: pytest plugin (``pytest -p qatmig``) for QEMU multifd / QAT live migration."""

from __future__ import annotations

__version__ = "0.1.0"
