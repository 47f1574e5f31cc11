"""Intel QAT for the qatzip method: sysfs discovery, the libqatzip binding, backend selection.

* :mod:`.devices` - ``discover(sysfs_root, dev_root) -> [QatDevice]`` (passive, no privileges)
* :mod:`.binding` - cffi ABI-mode ``libqatzip.so.3`` (``load_library``, ``QzSession``, ``Rc``)
* :mod:`.backend` - ``select_backend(params) -> QatSelection`` and the per-channel QzEngines

Nothing here imports cffi until a library is actually loaded.
"""

from __future__ import annotations

from .backend import (
    FallbackQzEngine,
    HardwareQzEngine,
    IsalQzEngine,
    QatSelection,
    QzFaultInjection,
    SoftwareQzEngine,
    select_backend,
)
from .binding import QatzipLibrary, QzSession, Rc, load_library, probe_library, rc_name
from .devices import QatDevice, discover, fixture_tree, fixture_trees, hardware_problem

__all__ = [
    "FallbackQzEngine",
    "HardwareQzEngine",
    "IsalQzEngine",
    "QatDevice",
    "QatSelection",
    "QatzipLibrary",
    "QzFaultInjection",
    "QzSession",
    "Rc",
    "SoftwareQzEngine",
    "discover",
    "fixture_tree",
    "fixture_trees",
    "hardware_problem",
    "load_library",
    "probe_library",
    "rc_name",
    "select_backend",
]
