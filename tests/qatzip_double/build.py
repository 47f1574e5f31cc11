"""Build and drive the libqatzip test double (qatzip_double.c) for the QAT tests.

Loaded by path from tests/test_qat_*.py (this folder is not a package). Policy:
the real ``libqatzip.so.3`` always wins when it loads; the double is compiled only when it
does not (or when ``QATMIG_FORCE_QATZIP_DOUBLE=1``), with ``$CC`` (default ``cc``) and zlib.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "qatzip_double.c"
FORCE_ENV = "QATMIG_FORCE_QATZIP_DOUBLE"

HOW_TO_ENABLE = (
    "install a C compiler and zlib headers (apt-get install gcc zlib1g-dev) or set CC, "
    "or install QATzip so the real libqatzip.so.3 is used"
)
#: How a run gets the real library (CI has none and never builds it).
HOW_TO_USE_REAL = (
    "set QATMIG_LIBQATZIP=/path/to/libqatzip.so.3 (a QATzip 1.3 build with qatlib), or "
    "install QATzip so the loader finds libqatzip.so.3"
)


def real_library() -> str | None:
    """Path (``$QATMIG_LIBQATZIP``, as the engine resolves it) or soname of a loadable real
    libqatzip, unless the double is forced."""
    if os.environ.get(FORCE_ENV) == "1":
        return None
    import ctypes

    want = os.environ.get("QATMIG_LIBQATZIP") or "libqatzip.so.3"
    try:
        handle = ctypes.CDLL(want)
    except OSError:
        return None
    # once the double is loaded, the loader answers the soname with it: not the real one
    if hasattr(handle, "qzdouble_set"):
        return None
    return want


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def build(out_dir: Path) -> Path:
    """Compile the double into ``out_dir/libqatzip.so.3`` (reused when already built).

    Raises RuntimeError with the compiler's output when the build fails.
    """
    out = out_dir / "libqatzip.so.3"
    if out.exists():
        return out
    cc = compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC', 'cc')}): {HOW_TO_ENABLE}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "libqatzip.so.3.tmp"
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
           "-Wl,-soname,libqatzip.so.3", "-o", str(tmp), str(SOURCE), "-lz"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"building the libqatzip double failed ({' '.join(cmd)}):\n"
                           f"{res.stderr}\n{HOW_TO_ENABLE}")
    tmp.replace(out)
    return out


class DoubleControl:
    """``qzdouble_set/get/reset`` of a loaded double (shares the process-wide handle)."""

    def __init__(self, path: Path | str) -> None:
        import cffi

        self.ffi = cffi.FFI()
        self.ffi.cdef("int qzdouble_set(const char *name, long value);"
                      "long qzdouble_get(const char *name);"
                      "void qzdouble_reset(void);")
        self.lib: Any = self.ffi.dlopen(str(path))

    def set(self, **values: int) -> None:
        for name, value in values.items():
            if self.lib.qzdouble_set(name.encode(), value) != 0:
                raise KeyError(name)

    def get(self, name: str) -> int:
        return int(self.lib.qzdouble_get(name.encode()))

    def reset(self) -> None:
        """Controls and counters back to defaults, the leaked-key count included; the binding's
        process-wide count of the same leak restarts with it (they measure one thing)."""
        from qatmig_engine.qat import binding

        self.lib.qzdouble_reset()
        binding.SOFTWARE_CALLS.used = 0
