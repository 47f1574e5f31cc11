"""multifd-compression=uadk (QEMU 9.1+ multifd-uadk.c, Huawei UADK/KAE), in software.

Per page, independently: zlib-wrapped deflate (UADK's ``"zlib"`` algorithm, level 1, 4 KiB
window); pages whose compressed form is not smaller than ``page_size`` go raw
(length == page_size). Payload = BE u32 length per normal page, then the data. No level
parameter. (QEMU without UADK hardware sends every page raw; this software path decodes both.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..constants import MULTIFD_FLAG_UADK, TARGET_PAGE_SIZE
from . import _perpage, _shared
from .base import CodecSpec, Compressor, Decompressor

_UADK_WBITS = 12  # zlib wrapper, 4 KiB window
_ZLIB_INFLATE_WBITS = 15  # accepts any zlib window up to 32 KiB


def _uadk_length_error(ch: int, got: int, want: int) -> str:
    return f"multifd {ch}: decompressed length error ({got} bytes, expected {want})"


@dataclass(frozen=True)
class UadkSpec(CodecSpec):
    def new_compressor(self, level: int | None = None, *, page_size: int = TARGET_PAGE_SIZE,
                       channel: int = 0, **options: Any) -> Compressor:
        _shared.check_no_level(self.name, level)
        _shared.check_options(self.name, options)
        return _perpage.PerPageCompressor(_shared.check_page_size(page_size), channel,
                                          _UADK_WBITS, 1)

    def new_decompressor(self, *, page_size: int = TARGET_PAGE_SIZE, channel: int = 0,
                         **options: Any) -> Decompressor:
        _shared.check_options(self.name, options)
        return _perpage.PerPageDecompressor(_shared.check_page_size(page_size), channel,
                                            _ZLIB_INFLATE_WBITS, "uadk", _uadk_length_error)

    def max_payload(self, normal_pages: int, page_size: int = TARGET_PAGE_SIZE) -> int:
        return _perpage.max_payload(normal_pages, page_size)


SPEC = UadkSpec(
    name="uadk", flag=MULTIFD_FLAG_UADK, level_parameter=None, level_range=None,
    default_level=None, streaming=False,
)
