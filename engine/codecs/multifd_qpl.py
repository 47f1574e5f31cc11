"""multifd-compression=qpl (QEMU 9.1+ multifd-qpl.c, Intel IAA), in software.

Per page, independently: raw DEFLATE (RFC 1951) with a 4 KiB history at level 1, what QPL
produces; pages that would not shrink below ``page_size`` go raw (length == page_size). Payload =
BE u32 length per normal page, then the data. No level parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..constants import MULTIFD_FLAG_QPL, TARGET_PAGE_SIZE
from . import _perpage, _shared
from .base import CodecSpec, Compressor, Decompressor

_QPL_WBITS = -12  # raw deflate, 4 KiB window
_RAW_INFLATE_WBITS = -15  # accept any window up to 32 KiB


def _qpl_length_error(ch: int, got: int, want: int) -> str:
    return f"multifd {ch}: qpl decompressed len {got}, expected len {want}"


@dataclass(frozen=True)
class QplSpec(CodecSpec):
    def new_compressor(self, level: int | None = None, *, page_size: int = TARGET_PAGE_SIZE,
                       channel: int = 0, **options: Any) -> Compressor:
        _shared.check_no_level(self.name, level)
        _shared.check_options(self.name, options)
        return _perpage.PerPageCompressor(_shared.check_page_size(page_size), channel,
                                          _QPL_WBITS, 1)

    def new_decompressor(self, *, page_size: int = TARGET_PAGE_SIZE, channel: int = 0,
                         **options: Any) -> Decompressor:
        _shared.check_options(self.name, options)
        return _perpage.PerPageDecompressor(_shared.check_page_size(page_size), channel,
                                            _RAW_INFLATE_WBITS, "qpl", _qpl_length_error)

    def max_payload(self, normal_pages: int, page_size: int = TARGET_PAGE_SIZE) -> int:
        return _perpage.max_payload(normal_pages, page_size)


SPEC = QplSpec(
    name="qpl", flag=MULTIFD_FLAG_QPL, level_parameter=None, level_range=None,
    default_level=None, streaming=False,
)
