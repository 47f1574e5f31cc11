"""zlib's stream API through cffi (ABI mode), for multifd-zlib's fast path.

Python's ``zlib`` module returns a new bytes object per call (grown block by block, then
joined), and its decompressor hands back a new object the caller copies into guest memory. The
engine instead deflates each packet into one buffer it reuses (as QEMU's ``zbuff``) and inflates
straight into the runs of guest pages (as QEMU inflates into ``p->host``). Output bytes stay
those of Python's ``zlib`` module: the library loaded here must be the very zlib that module
runs on (``zlibVersion() == zlib.ZLIB_RUNTIME_VERSION``), otherwise :data:`lib` is None and
the codec keeps to the ``zlib`` module. cffi releases the GIL during every call.
"""

from __future__ import annotations

import zlib
from typing import Any

Z_OK = 0
Z_STREAM_END = 1
Z_NEED_DICT = 2
Z_BUF_ERROR = -5
Z_NO_FLUSH = 0
Z_SYNC_FLUSH = 2
Z_DEFLATED = 8
MAX_WBITS = 15
DEF_MEM_LEVEL = 8  # what deflateInit (QEMU) and zlib.compressobj (Python) use
Z_DEFAULT_STRATEGY = 0

_CDEF = """
typedef struct z_stream_s {
    const unsigned char *next_in;
    unsigned int avail_in;
    unsigned long total_in;
    unsigned char *next_out;
    unsigned int avail_out;
    unsigned long total_out;
    const char *msg;
    void *state;
    void *zalloc;
    void *zfree;
    void *opaque;
    int data_type;
    unsigned long adler;
    unsigned long reserved;
} z_stream;
const char *zlibVersion(void);
int deflateInit2_(z_stream *strm, int level, int method, int windowBits, int memLevel,
                  int strategy, const char *version, int stream_size);
int deflate(z_stream *strm, int flush);
int deflateEnd(z_stream *strm);
int inflateInit2_(z_stream *strm, int windowBits, const char *version, int stream_size);
int inflate(z_stream *strm, int flush);
int inflateEnd(z_stream *strm);
"""

ffi: Any = None
lib: Any = None
#: Why the fast path is off (None when it is on).
unavailable: str | None = None


def _load() -> None:
    global ffi, lib, unavailable
    try:
        import cffi

        f = cffi.FFI()
        f.cdef(_CDEF)
        lz = f.dlopen("libz.so.1")
        version = f.string(lz.zlibVersion()).decode("ascii", "replace")
    except (ImportError, OSError, AttributeError) as exc:
        unavailable = f"libz.so.1 not loadable through cffi ({exc})"
        return
    if version != zlib.ZLIB_RUNTIME_VERSION:
        unavailable = (f"libz.so.1 is zlib {version}, Python's zlib module runs on "
                       f"{zlib.ZLIB_RUNTIME_VERSION}: output bytes could differ")
        return
    ffi, lib = f, lz


_load()


def new_stream() -> Any:
    """A zeroed ``z_stream *`` (zalloc/zfree/opaque NULL: zlib's allocator)."""
    return ffi.new("z_stream *")


def deflate_init(strm: Any, level: int) -> int:
    """``deflateInit(strm, level)`` as QEMU calls it (windowBits 15, memLevel 8, default
    strategy) -- the parameters of Python's ``zlib.compressobj(level)`` too."""
    return int(lib.deflateInit2_(strm, level, Z_DEFLATED, MAX_WBITS, DEF_MEM_LEVEL,
                                 Z_DEFAULT_STRATEGY, lib.zlibVersion(), ffi.sizeof("z_stream")))


def inflate_init(strm: Any) -> int:
    """``inflateInit(strm)`` (windowBits 15: a zlib-wrapped stream, as QEMU's receiver)."""
    return int(lib.inflateInit2_(strm, MAX_WBITS, lib.zlibVersion(), ffi.sizeof("z_stream")))
