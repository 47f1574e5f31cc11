"""cffi ABI-mode binding of Intel QATzip (``libqatzip.so.3``): no headers, no compiler.

Struct layouts are QATzip 1.2/1.3's on x86-64 (spec qatzip.md §3) and are checked with
``ffi.sizeof`` at import. The binding guards against the library's known faults:

* it never streams a packet in two calls (always ``last=1``; the output buffer is sized with
  ``qzMaxCompressedLength``), because streamed members carry QZ size fields 0/0;
* it checks consumed *and* produced sizes (the library can return QZ_OK with partial output)
  and walks the gzip-ext member headers of every result;
* a session is set up and used by one thread only (sharing one crashes, QATzip issue #56);
* :meth:`QzSession.hardware` tells whether the session really runs on a device: callers must
  not route migration traffic through the library's software path (it leaks a pthread key
  per call and fails the whole process after ~1020 calls: the next OpenSSL initialisation
  segfaults). The binding counts the library's software-path calls process-wide and, past
  :data:`LIBRARY_SOFTWARE_CALL_BUDGET`, serves a software-mode session with the engine's own
  gzip-ext producer and decoder (:mod:`qatmig_engine.codecs.qzformat`, byte-identical with the
  library's software path) instead of calling the library again;
* after a failed or short ``qzDecompress`` the library leaves the session's inflate stream as
  it was (every later call returns QZ_DATA_ERROR, even on valid input, or continues the old
  member): the binding tears the session down and sets it up afresh before raising, and does
  the same after a failed ``qzCompress``.

Library resolution: explicit ``path`` > env ``QATMIG_LIBQATZIP`` > ``libqatzip.so.3`` through
the system loader.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ..errors import QatError, QatLibraryError, QatUnavailable

SONAME = "libqatzip.so.3"
ENV_LIBRARY = "QATMIG_LIBQATZIP"

CDEF = """
typedef struct {
    long          hw_session_stat;
    int           thd_sess_stat;
    void         *internal;
    unsigned long total_in;
    unsigned long total_out;
} QzSession_T;
typedef struct {
    int direction;
    unsigned int comp_lvl;
    unsigned char comp_algorithm;
    unsigned int max_forks;
    unsigned char sw_backup;
    unsigned int hw_buff_sz;
    unsigned int strm_buff_sz;
    unsigned int input_sz_thrshold;
    unsigned int req_cnt_thrshold;
    unsigned int wait_cnt_thrshold;
    int polling_mode;
    unsigned int is_sensitive_mode;
} QzSessionParamsCommon_T;
typedef struct {
    QzSessionParamsCommon_T common_params;
    int huffman_hdr;
    int data_fmt;
} QzSessionParamsDeflate_T;
typedef struct {
    QzSessionParamsDeflate_T deflate_params;
    unsigned char stop_decompression_stream_end;
    unsigned char zlib_format;
} QzSessionParamsDeflateExt_T;
int qzInit(QzSession_T *sess, unsigned char sw_backup);
int qzGetDefaultsDeflate(QzSessionParamsDeflate_T *defaults);
int qzSetupSessionDeflate(QzSession_T *sess, QzSessionParamsDeflate_T *params);
int qzSetupSessionDeflateExt(QzSession_T *sess, QzSessionParamsDeflateExt_T *params);
int qzCompress(QzSession_T *sess, const unsigned char *src, unsigned int *src_len,
               unsigned char *dest, unsigned int *dest_len, unsigned int last);
int qzDecompress(QzSession_T *sess, const unsigned char *src, unsigned int *src_len,
                 unsigned char *dest, unsigned int *dest_len);
int qzTeardownSession(QzSession_T *sess);
int qzClose(QzSession_T *sess);
unsigned int qzMaxCompressedLength(unsigned int src_sz, QzSession_T *sess);
void *qzMalloc(size_t sz, int numa, int force_pinned);
void qzFree(void *m);
int qzSetLogLevel(int log_level);
"""

#: x86-64 sizes from the spec; a mismatch means the cdef is wrong for this platform.
EXPECTED_SIZES = {
    "QzSession_T": 40,
    "QzSessionParamsCommon_T": 48,
    "QzSessionParamsDeflate_T": 56,
    "QzSessionParamsDeflateExt_T": 60,
}
#: probed by name (absent from 1.2.x and older); qzdouble_set marks the project's test double
OPTIONAL_SYMBOLS = ("qzSetLogLevel", "qzSetupSessionDeflateExt", "qzCompress2",
                    "qzGetDeflateEndOfStream", "qzdouble_set")
REQUIRED_SYMBOLS = ("qzInit", "qzGetDefaultsDeflate", "qzSetupSessionDeflate", "qzCompress",
                    "qzDecompress", "qzTeardownSession", "qzClose", "qzMaxCompressedLength",
                    "qzMalloc", "qzFree")


class Rc(IntEnum):
    """QATzip return codes (``qatzip.h``), by the library's names."""

    QZ_OK = 0
    QZ_DUPLICATE = 1
    QZ_FORCE_SW = 2
    QZ_PARAMS = -1
    QZ_FAIL = -2
    QZ_BUF_ERROR = -3
    QZ_DATA_ERROR = -4
    QZ_TIMEOUT = -5
    QZ_INTEG = -100
    QZ_NO_HW = 11
    QZ_NO_MDRV = 12
    QZ_NO_INST_ATTACH = 13
    QZ_LOW_MEM = 14
    QZ_LOW_DEST_MEM = 15
    QZ_UNSUPPORTED_FMT = 16
    QZ_NONE = 100
    QZ_NOSW_NO_HW = -101
    QZ_NOSW_NO_MDRV = -102
    QZ_NOSW_NO_INST_ATTACH = -103
    QZ_NOSW_LOW_MEM = -104
    QZ_NO_SW_AVAIL = -105
    QZ_NOSW_UNSUPPORTED_FMT = -116
    QZ_POST_PROCESS_ERROR = -117
    QZ_METADATA_OVERFLOW = -118
    QZ_OUT_OF_RANGE = -119
    QZ_NOT_SUPPORTED = -200


def rc_name(rc: int) -> str:
    """``-101`` -> ``"QZ_NOSW_NO_HW"``; unknown codes -> ``"QZ_UNKNOWN(<rc>)"``."""
    try:
        return Rc(rc).name
    except ValueError:
        return f"QZ_UNKNOWN({rc})"


class DataFormat(IntEnum):
    """Public ``QzDataFormat_T``."""

    QZ_DEFLATE_4B = 0
    QZ_DEFLATE_GZIP = 1
    QZ_DEFLATE_GZIP_EXT = 2
    QZ_DEFLATE_RAW = 3


PINNED_MEM = 1
COMMON_MEM = 0
#: Software-path library calls (qzInit, qzCompress, qzDecompress without a device) this process
#: makes at most: each leaks one of the process's ~1024 pthread keys (spec qatzip.md §2.3).
LIBRARY_SOFTWARE_CALL_BUDGET = 768


class _SoftwareCallBudget:
    """Process-wide count of libqatzip calls that ran its (key-leaking) software path."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._lock = threading.Lock()

    @property
    def spent(self) -> bool:
        """True once the budget is used up (without counting a call)."""
        with self._lock:
            return self.used >= self.budget

    def take(self) -> bool:
        """Count one call; False when the budget is spent (do not call the library)."""
        with self._lock:
            if self.used >= self.budget:
                return False
            self.used += 1
            return True


SOFTWARE_CALLS = _SoftwareCallBudget(LIBRARY_SOFTWARE_CALL_BUDGET)
QZ_HW_BUFF_SZ = 64 * 1024
GZIP_EXT_HEADER = 24
GZIP_EXT_FOOTER = 8


def _check(call: str, rc: int, ok: tuple[int, ...] = (Rc.QZ_OK,), detail: str = "") -> int:
    if rc not in ok:
        raise QatLibraryError(call, rc, rc_name(rc), detail)
    return rc


def gzip_ext_members(buf: bytes | memoryview) -> list[tuple[int, int]]:
    """``[(src_sz, dest_sz), ...]`` of a buffer of gzip-ext members, or raise QatError.

    Used to check every library result: the members must tile the buffer exactly and carry
    non-zero size fields (a streamed call leaves them 0/0).
    """
    mv = memoryview(buf)
    out = []
    off = 0
    while off < len(mv):
        if len(mv) - off < GZIP_EXT_HEADER + GZIP_EXT_FOOTER:
            raise QatError(f"truncated gzip-ext member at offset {off}")
        magic, cm, flg, _mtime, _xfl, _os, xlen, si1, si2, ln, src_sz, dest_sz = struct.unpack_from(
            "<HBBIBBHccHII", mv, off)
        if (magic, cm, flg, xlen, si1, si2, ln) != (0x8B1F, 8, 4, 12, b"Q", b"Z", 8):
            raise QatError(f"no gzip-ext member header at offset {off}")
        end = off + GZIP_EXT_HEADER + dest_sz + GZIP_EXT_FOOTER
        if end > len(mv):
            raise QatError(f"gzip-ext member at offset {off} runs past the output ({end} > "
                           f"{len(mv)})")
        isize = struct.unpack_from("<I", mv, end - 4)[0]
        if isize != src_sz & 0xFFFFFFFF:
            raise QatError(f"gzip-ext member at offset {off}: ISIZE {isize} != src_sz {src_sz}")
        out.append((src_sz, dest_sz))
        off = end
    return out


# ------------------------------------------------------------------------- the library
@dataclass
class LibraryInfo:
    """What ``probe_library`` found (for ``qatmig devices`` and fallback reasons)."""

    loaded: bool
    requested: str  # what was dlopen'ed (path or soname)
    path: str | None  # resolved file, from /proc/self/maps
    error: str = ""
    version_guess: str = ""
    test_double: bool = False
    symbols: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "requested": self.requested, "path": self.path,
                "error": self.error, "version_guess": self.version_guess,
                "test_double": self.test_double, "optional_symbols": self.symbols}


def _resolve_request(path: str | os.PathLike[str] | None) -> str:
    if path is not None:
        return os.fspath(path)
    return os.environ.get(ENV_LIBRARY) or SONAME


def _mapped_path(requested: str) -> str | None:
    """The file the loader really mapped (a soname request does not say which one)."""
    base = os.path.basename(requested)
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    p = parts[5].strip()
                    if os.path.basename(p).startswith(base) or (
                        "/" in requested and os.path.realpath(requested) == p
                    ):
                        return p
    except OSError:
        pass
    return requested if "/" in requested else None


class QatzipLibrary:
    """One dlopen'ed libqatzip (process-wide: use :func:`load_library`)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        try:
            import cffi
        except ImportError as exc:  # pragma: no cover - cffi is a dependency
            raise QatUnavailable("python package cffi is not installed") from exc
        self.requested = _resolve_request(path)
        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        for name, size in EXPECTED_SIZES.items():
            got = ffi.sizeof(name)
            if got != size:
                raise QatError(f"cdef of {name} is {got} bytes, QATzip's x86-64 layout is {size}"
                               " (unsupported platform)")
        try:
            lib = ffi.dlopen(self.requested)
        except OSError as exc:
            why = str(exc).split(".  Additionally", 1)[0]  # cffi appends a find_library note
            raise QatUnavailable(
                f"library not found: cannot load {self.requested} ({why}); install QATzip "
                f"(libqatzip.so.3) or point {ENV_LIBRARY} at it"
            ) from exc
        self.ffi = ffi
        self.lib = lib
        try:
            import ctypes

            # a second handle on the same object, only to look symbols up by name
            self._dl: Any = ctypes.CDLL(self.requested)
        except OSError:  # pragma: no cover - cffi just loaded it
            self._dl = None
        missing = [s for s in REQUIRED_SYMBOLS if not self._has(s)]
        if missing:
            raise QatUnavailable(f"{self.requested} lacks QATzip symbols: {', '.join(missing)}")
        self.symbols = {s: self._has(s) for s in OPTIONAL_SYMBOLS}
        self.path = _mapped_path(self.requested)
        self.test_double = self.symbols.pop("qzdouble_set")
        if self.symbols["qzSetLogLevel"]:
            # without it a device-less process prints two lines per probe to stderr
            lib.qzSetLogLevel(1)  # FATAL only

    def _has(self, symbol: str) -> bool:
        return self._dl is not None and hasattr(self._dl, symbol)

    @property
    def version_guess(self) -> str:
        """No runtime version query exists (spec §2.2): infer from optional symbols."""
        tag = " (test double)" if self.test_double else ""
        if self.symbols["qzSetupSessionDeflateExt"] or self.symbols["qzSetLogLevel"]:
            return ">= 1.3 (has qzSetupSessionDeflateExt/qzSetLogLevel)" + tag
        return "1.0.9 - 1.2.x (no 1.3 symbols)" + tag

    def info(self) -> LibraryInfo:
        return LibraryInfo(True, self.requested, self.path, "", self.version_guess,
                           self.test_double, dict(self.symbols))

    # -- thin wrappers, each returning the raw rc where the caller must decide ---------
    def defaults_deflate(self) -> Any:
        params = self.ffi.new("QzSessionParamsDeflate_T *")
        _check("qzGetDefaultsDeflate", self.lib.qzGetDefaultsDeflate(params))
        return params

    def max_compressed_length(self, n: int, session: Any = None) -> int:
        sess = session if session is not None else self.ffi.NULL
        out = int(self.lib.qzMaxCompressedLength(n, sess))
        if out == 0:
            raise QatError(f"qzMaxCompressedLength({n}) overflowed")
        return out

    def malloc(self, size: int, numa: int = 0, pinned: bool = True) -> tuple[Any, bool]:
        """``qzMalloc`` pinned, falling back to common memory like QEMU; ``(ptr, pinned)``.

        The pointer is freed with ``qzFree`` when it is garbage-collected.
        """
        ptr = self.ffi.NULL
        got_pinned = False
        if pinned:
            ptr = self.lib.qzMalloc(size, numa, PINNED_MEM)
            got_pinned = ptr != self.ffi.NULL
        if ptr == self.ffi.NULL:
            ptr = self.lib.qzMalloc(size, numa, COMMON_MEM)
        if ptr == self.ffi.NULL:
            raise QatError(f"qzMalloc({size}) failed for pinned and common memory")
        return self.ffi.gc(self.ffi.cast("unsigned char *", ptr), self.lib.qzFree), got_pinned


_LIBS: dict[str, QatzipLibrary] = {}
_LIBS_LOCK = threading.Lock()


def load_library(path: str | os.PathLike[str] | None = None) -> QatzipLibrary:
    """The process-wide :class:`QatzipLibrary` for ``path`` (raises QatUnavailable)."""
    key = _resolve_request(path)
    with _LIBS_LOCK:
        lib = _LIBS.get(key)
        if lib is None:
            lib = _LIBS[key] = QatzipLibrary(key)
        return lib


def probe_library(path: str | os.PathLike[str] | None = None) -> LibraryInfo:
    """Does libqatzip load? Never raises for a missing library."""
    try:
        return load_library(path).info()
    except QatError as exc:
        return LibraryInfo(False, _resolve_request(path), None, str(exc))


# ------------------------------------------------------------------------- sessions
class QzSession:
    """One deflate session (``qzInit(sw_backup)`` + ``qzSetupSessionDeflate``).

    One session per thread: the thread that first uses it owns it. Every compress is one
    ``qzCompress(last=1)`` of a whole packet into a buffer of ``qzMaxCompressedLength``.
    """

    def __init__(
        self,
        lib: QatzipLibrary,
        *,
        level: int = 1,
        hw_buff_sz: int = QZ_HW_BUFF_SZ,
        data_fmt: int = DataFormat.QZ_DEFLATE_GZIP_EXT,
        sw_backup: bool = True,
        pinned: bool = True,
        numa: int = 0,
        max_input: int = 512 * 1024,
    ) -> None:
        self._lib = lib
        ffi, c = lib.ffi, lib.lib
        self._ffi = ffi
        self.level = level
        self.hw_buff_sz = hw_buff_sz
        self.data_fmt = int(data_fmt)
        self.sw_backup = sw_backup
        self._pinned_wanted = pinned
        self._numa = numa
        self._owner = threading.get_ident()
        self._sess = ffi.new("QzSession_T *")
        self._open = False
        #: times the session was set up afresh after a failed call (dirty library state)
        self.resets = 0
        #: software-mode calls served by the engine's producer/decoder (budget spent)
        self.engine_calls = 0
        self.init_rc = _check("qzInit", c.qzInit(self._sess, 1 if sw_backup else 0),
                              (Rc.QZ_OK, Rc.QZ_DUPLICATE))
        self._setup()
        if not self.hardware:
            SOFTWARE_CALLS.take()  # qzInit without a device leaked one key already
        self._src: Any = None
        self._dest: Any = None
        self._src_cap = 0
        self._dest_cap = 0
        self.pinned: bool | None = None
        try:
            self._ensure_buffers(max_input)
        except QatError:
            self.close()
            raise

    def _setup(self) -> None:
        params = self._lib.defaults_deflate()
        params.common_params.comp_lvl = self.level
        params.common_params.hw_buff_sz = self.hw_buff_sz
        params.common_params.sw_backup = 1 if self.sw_backup else 0
        params.data_fmt = self.data_fmt
        rc = self._lib.lib.qzSetupSessionDeflate(self._sess, params)
        _check("qzSetupSessionDeflate", rc, (Rc.QZ_OK, Rc.QZ_DUPLICATE))
        self._open = True

    # -- state --------------------------------------------------------------------------
    @property
    def hw_session_stat(self) -> int:
        return int(self._sess.hw_session_stat)

    @property
    def hardware(self) -> bool:
        """True when the library set this session up on a device (hw_session_stat QZ_OK)."""
        return self.hw_session_stat == Rc.QZ_OK

    def _own(self, call: str) -> None:
        if not self._open:
            raise QatError(f"{call} on a closed QATzip session")
        if threading.get_ident() != self._owner:
            raise QatError(f"{call}: a QATzip session is used by one thread only (QATzip #56)")

    def _ensure_buffers(self, n: int) -> None:
        if n > 0xFFFFFFFF:
            raise QatError("packet size too large for QAT")
        if n > self._src_cap:
            self._src, self.pinned = self._lib.malloc(n, self._numa, self._pinned_wanted)
            self._src_cap = n
        need = self._lib.max_compressed_length(max(n, self._src_cap), self._sess)
        if need > self._dest_cap:
            self._dest, pinned = self._lib.malloc(need, self._numa, self._pinned_wanted)
            self.pinned = bool(self.pinned and pinned)
            self._dest_cap = need

    def set_level(self, level: int) -> None:
        """Re-set up the session at another level (QEMU fixes it per migration)."""
        if level == self.level:
            return
        self._own("qzSetupSessionDeflate")
        _check("qzTeardownSession", self._lib.lib.qzTeardownSession(self._sess))
        self.level = level
        self._setup()

    def _reset(self) -> None:
        """Tear the session down and set it up again: fresh deflate and inflate streams."""
        self.resets += 1
        self._lib.lib.qzTeardownSession(self._sess)
        self._open = False
        self._setup()

    def _library_allowed(self) -> bool:
        """Whether this call may go to the library (always on hardware; in software mode
        while the process's key budget lasts)."""
        if self.hardware or SOFTWARE_CALLS.take():
            return True
        if self.data_fmt != DataFormat.QZ_DEFLATE_GZIP_EXT:
            raise QatError(
                f"libqatzip's software path was called {SOFTWARE_CALLS.budget} times in this "
                "process (each call leaks a pthread key); refusing more for data format "
                f"{DataFormat(self.data_fmt).name}"
            )
        self.engine_calls += 1
        return False

    # -- data ---------------------------------------------------------------------------
    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        """One whole packet -> one gzip-ext buffer; every size is checked."""
        self._own("qzCompress")
        src = memoryview(data).cast("B")
        n = len(src)
        if n == 0:
            raise QatError("qzCompress: empty input (a packet always has normal pages)")
        if not self._library_allowed():
            from ..codecs import qzformat

            return qzformat.compress(src, self.level, hw_buff_sz=self.hw_buff_sz)
        try:
            return self._compress(src, n)
        except QatError:
            self._reset()
            raise

    def _compress(self, src: memoryview, n: int) -> bytes:
        self._ensure_buffers(n)
        ffi, c = self._ffi, self._lib.lib
        ffi.memmove(self._src, src, n)
        src_len = ffi.new("unsigned int *", n)
        dest_len = ffi.new("unsigned int *", self._dest_cap)
        rc = c.qzCompress(self._sess, self._src, src_len, self._dest, dest_len, 1)
        _check("qzCompress", rc)
        consumed, produced = int(src_len[0]), int(dest_len[0])
        if consumed != n:
            raise QatLibraryError("qzCompress", rc, rc_name(rc),
                                  f"consumed {consumed} of {n} input bytes")
        if not 0 < produced <= self._dest_cap:
            raise QatLibraryError("qzCompress", rc, rc_name(rc),
                                  f"produced {produced} bytes (buffer {self._dest_cap})")
        out = bytes(ffi.buffer(self._dest, produced))
        if self.data_fmt == DataFormat.QZ_DEFLATE_GZIP_EXT:
            try:
                total = sum(s for s, _ in gzip_ext_members(out))
            except QatError as exc:
                raise QatLibraryError("qzCompress", rc, rc_name(rc),
                                      f"malformed output: {exc}") from None
            if total != n:
                raise QatLibraryError("qzCompress", rc, rc_name(rc),
                                      f"output members cover {total} of {n} input bytes")
        return out

    def decompress(self, data: bytes | bytearray | memoryview, expected: int) -> bytes:
        """Decompress to exactly ``expected`` bytes (truncation is QZ_OK in the library).

        Any failure resets the session first: the library keeps a failed or unfinished
        inflate stream and would feed the next call into it.
        """
        self._own("qzDecompress")
        src = memoryview(data).cast("B")
        if not self._library_allowed():
            from ..codecs import qzformat
            from ..errors import CodecError

            try:
                out = qzformat.decompress(src, max_output=expected)
            except CodecError as exc:
                raise QatLibraryError("qzDecompress", int(Rc.QZ_DATA_ERROR),
                                      "QZ_DATA_ERROR", f"(engine decoder) {exc}") from None
            if len(out) != expected:
                raise QatLibraryError("qzDecompress", int(Rc.QZ_OK), "QZ_OK",
                                      f"(engine decoder) produced {len(out)} of {expected} "
                                      "expected")
            return out
        try:
            return self._decompress(src, expected)
        except QatError:
            self._reset()
            raise

    def _decompress(self, src: memoryview, expected: int) -> bytes:
        n = len(src)
        ffi, c = self._ffi, self._lib.lib
        sbuf = ffi.from_buffer("unsigned char[]", src) if n else ffi.new("unsigned char[1]")
        # one spare byte: output beyond ``expected`` shows up as produced > expected
        dbuf = ffi.new("unsigned char[]", expected + 1)
        src_len = ffi.new("unsigned int *", n)
        dest_len = ffi.new("unsigned int *", expected + 1)
        try:
            rc = c.qzDecompress(self._sess, sbuf, src_len, dbuf, dest_len)
        finally:
            if n:  # release the export of ``data`` now, never from the garbage collector
                ffi.release(sbuf)
        _check("qzDecompress", rc)
        if int(dest_len[0]) != expected or int(src_len[0]) != n:
            raise QatLibraryError("qzDecompress", rc, rc_name(rc),
                                  f"consumed {int(src_len[0])} of {n} bytes, produced "
                                  f"{int(dest_len[0])} of {expected} expected")
        return bytes(ffi.buffer(dbuf, expected))

    def close(self) -> None:
        """qzTeardownSession + qzClose; idempotent (pinned buffers are freed by GC)."""
        if self._open:
            self._open = False
            c = self._lib.lib
            c.qzTeardownSession(self._sess)
            c.qzClose(self._sess)
        self._src = self._dest = None
        self._src_cap = self._dest_cap = 0

    def __enter__(self) -> QzSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
