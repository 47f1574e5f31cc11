#!/usr/bin/env python3
"""Record what the real libqatzip produces into fixtures/qatzip/manifest.json (no library code).

For every level 1..9, size class and content kind, one ``qzCompress(last=1)`` of the library's
software path (a session without a device) through the engine's binding; the manifest keeps the
output's size and sha256 - the inputs are regenerated from their recipe
(``qatmig_engine.codecs.qzformat`` tests compare the engine's producer with every digest).
Needs an installed libqatzip (QATMIG_LIBQATZIP=/path/to/libqatzip.so.3); files made by the real
``qzip`` tool are recorded by hand and listed under "files".

    QATMIG_LIBQATZIP=/opt/qatzip/lib/libqatzip.so.3 .venv/bin/python tools/record_qatzip_vectors.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from qatmig_engine.qat.binding import QzSession, load_library

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "qatzip" / "manifest.json"
SIZES = (1, 1000, 65536, 65537, 200_000, 524_288, 1 << 20)
KINDS = ("random", "text", "zero")


def make_input(kind: str, n: int) -> bytes:
    """The recipe of every recorded input (kept in sync with tests/test_qzformat.py)."""
    if kind == "zero":
        return bytes(n)
    if kind == "random":  # SHA-256 counter mode: incompressible, reproducible anywhere
        out = bytearray()
        k = 0
        while len(out) < n:
            out += hashlib.sha256(b"qatmig-%d-%d" % (n, k)).digest()
            k += 1
        return bytes(out[:n])
    line = b"%06d qatmig byte-exactness line\n"
    return b"".join(line % (k % 977) for k in range(n // 30 + 1))[:n]


def main() -> int:
    lib = load_library()
    if lib.test_double:
        raise SystemExit("this is the project's test double, not libqatzip")
    manifest = json.loads(OUT.read_text()) if OUT.exists() else {}
    cases = []
    for level in range(1, 10):
        for kind in KINDS:
            for n in SIZES:
                data = make_input(kind, n)
                with QzSession(lib, level=level, max_input=n) as s:
                    if s.hardware:
                        raise SystemExit("a QAT device is present: record the software path")
                    out = s.compress(data)
                    assert s.engine_calls == 0, "budget spent: run fewer cases per process"
                cases.append({"level": level, "kind": kind, "input_bytes": n,
                              "output_bytes": len(out),
                              "sha256": hashlib.sha256(out).hexdigest()})
            print(f"level {level} done", file=sys.stderr)
    manifest["library"] = {"file": str(lib.path), "version": "1.3.1 (intel/QATzip 10dbadb)",
                           "path": "software (no QAT device), session defaults, gzip-ext"}
    manifest["compress_cases"] = cases
    OUT.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
