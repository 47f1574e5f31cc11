"""Where the data-only ``qatmig_fixtures`` package lives on disk.

``fixtures/`` has no ``__init__.py`` (data only), so it imports as a namespace package. Under
setuptools' editable install its ``__path__`` also holds the editable finder's hook entry, which
makes ``importlib.resources.files()`` fail with NotADirectoryError on Python 3.11; a wheel
install works either way. Looking through ``__path__`` for the real directory covers both.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import QatmigError


def fixtures_dir(*parts: str) -> Path:
    """Path of ``qatmig_fixtures/<parts...>`` (raises QatmigError when it is not installed)."""
    try:
        pkg = importlib.import_module("qatmig_fixtures")
    except ImportError as exc:
        raise QatmigError(
            "qatmig_fixtures is not installed: pip install pytest-qatmig (or pip install -e .)"
        ) from exc
    for entry in list(getattr(pkg, "__path__", [])):
        base = Path(str(entry))
        if base.is_dir():
            target = base.joinpath(*parts)
            if target.exists():
                return target
    from importlib.resources import files

    try:
        target = Path(str(files("qatmig_fixtures").joinpath(*parts)))
    except (NotADirectoryError, TypeError) as exc:
        raise QatmigError(f"cannot locate qatmig_fixtures/{'/'.join(parts)}") from exc
    if not target.exists():
        raise QatmigError(f"qatmig_fixtures/{'/'.join(parts)} is missing from the installation")
    return target
