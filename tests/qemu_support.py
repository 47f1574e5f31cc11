"""Shared by the tests that drive a real qemu-system-x86_64."""

from __future__ import annotations

import pytest
from qatmig_engine.qemu.process import find_qemu

#: Module marks for QEMU tests: the ``qemu`` marker, and a skip that says how to get QEMU.
QEMU_MARKS = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        find_qemu() is None,
        reason="qemu-system-x86_64 not found: install it with `apt-get install "
        "qemu-system-x86` (or `make system-deps` as root) to run the QEMU interop tests",
    ),
]
