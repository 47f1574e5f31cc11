"""tools/record_golden.py records a fresh capture from a real QEMU 7.2 that the checks accept.

Needs qemu-system-x86_64 (``apt-get install qemu-system-x86``); skips with that hint otherwise.
"""

from __future__ import annotations

import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
from qatmig_engine.qemu.process import find_qemu
from qatmig_engine.tap import check_capture

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        find_qemu() is None,
        reason="qemu-system-x86_64 not found: install it with `apt-get install "
        "qemu-system-x86` (or `make system-deps` as root) to run the QEMU interop tests",
    ),
]


def test_record_golden_tool(tmp_path):
    out = tmp_path / "golden"
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "record_golden.py"), "--out", str(out),
         "--methods", "zstd", "--size", "8M"],
        capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["qemu_version"].startswith("QEMU emulator version 7.2")
    (cap,) = m["captures"]
    conns = [lzma.decompress((out / c["file"]).read_bytes()) for c in cap["connections"]]
    assert [c["role"] for c in cap["connections"]] == ["main", "multifd", "multifd"]
    report = check_capture(conns, method="zstd", channels=2)
    assert report.ok
    assert report.totals()["pages"] == cap["tap"]["pages"]
