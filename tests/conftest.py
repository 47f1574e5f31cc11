"""Test-local helpers shared by several test files (none of the plugin's fixtures live here)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def shm() -> Iterator[str]:
    """A private directory in /dev/shm (RAM files for QEMU's memory-backend-file), removed after."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="qatmig-test-", dir=base) as d:
        yield d
