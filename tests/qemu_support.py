"""Shared by the tests that drive a real qemu-system-x86_64."""

from __future__ import annotations

import pytest
from qatmig_engine.qemu.fetch import Qemu10, find_qemu10
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

#: Module marks for QEMU 10.0 tests: skip unless it was fetched (``make system-deps`` does it).
QEMU10_MARKS = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        find_qemu10() is None,
        reason="QEMU 10.0 not fetched: run `python -m qatmig_engine.qemu.fetch` (or `make "
        "system-deps`; needs apt-get, dpkg and the Debian mirror) to run the QEMU 10.0 tests",
    ),
]


def qemu10() -> Qemu10:
    """The fetched QEMU 10.0 (use under QEMU10_MARKS)."""
    q = find_qemu10()
    if q is None:  # pragma: no cover - QEMU10_MARKS skips first
        pytest.skip("QEMU 10.0 not fetched: run `python -m qatmig_engine.qemu.fetch`")
    return q
