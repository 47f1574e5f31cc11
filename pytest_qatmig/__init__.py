"""pytest-qatmig: pytest plugin (``pytest -p qatmig``) for QEMU multifd / QAT live migration.

Public API (imported lazily so that ``import pytest_qatmig`` stays cheap): :class:`QatDevice`,
:class:`Implementation`, :class:`MigrationPair`, :class:`PairSpec`, :class:`MigrationResult`,
:class:`GuestImage`, :func:`load_implementation`, and the roles API (:class:`RoleContext`,
:class:`Incoming`, :class:`RolePair`; see docs/plugin.md).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "QatDevice": "pytest_qatmig.devices",
    "Implementation": "pytest_qatmig.adapters",
    "MigrationPair": "pytest_qatmig.adapters",
    "PairSpec": "pytest_qatmig.adapters",
    "load_implementation": "pytest_qatmig.adapters",
    "RoleContext": "pytest_qatmig.roles",
    "RolePair": "pytest_qatmig.roles",
    "Incoming": "pytest_qatmig.roles",
    "MigrationResult": "pytest_qatmig.results",
    "GuestImage": "pytest_qatmig.fixtures",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pytest_qatmig' has no attribute {name!r}")
