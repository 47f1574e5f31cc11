"""The per-page container QEMU's qpl and uadk methods share (multifd-qpl.c, multifd-uadk.c).

Payload = ``normal_pages`` big-endian u32 sizes, then each page's data back to back. A size equal
to ``page_size`` means the page travels raw (its compressed form would not be smaller).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from ..constants import TARGET_PAGE_SIZE
from ..errors import CodecError, PayloadSizeError
from . import _shared
from .base import Compressor, Decompressor


class PerPageCompressor(Compressor):
    """Compresses each page on its own; a page that does not shrink is sent raw."""

    def __init__(self, page_size: int, channel: int, wbits: int, level: int) -> None:
        self.page_size = page_size
        self.channel = channel
        self._wbits = wbits
        self._level = level

    def compress(self, pages: memoryview | bytes) -> bytes:
        ps = self.page_size
        mv = memoryview(pages).cast("B")
        total = len(mv)
        if total % ps:
            raise CodecError(
                f"multifd {self.channel}: {total} bytes of pages is not a multiple of the "
                f"page size {ps}",
                channel=self.channel,
            )
        n = total // ps
        sizes: list[int] = []
        datas: list[bytes | memoryview] = []
        level, wbits, deflated = self._level, self._wbits, zlib.DEFLATED
        for i in range(n):
            page = mv[i * ps:(i + 1) * ps]
            c = zlib.compressobj(level, deflated, wbits)
            data = c.compress(page) + c.flush()
            if len(data) >= ps:
                sizes.append(ps)
                datas.append(page)
            else:
                sizes.append(len(data))
                datas.append(data)
        return b"".join([struct.pack(f">{n}I", *sizes), *datas])


class PerPageDecompressor(Decompressor):
    """Validates the size table, then inflates every page to exactly ``page_size`` bytes."""

    def __init__(self, page_size: int, channel: int, wbits: int, method: str,
                 length_error: Callable[[int, int, int], str]) -> None:
        self.page_size = page_size
        self.channel = channel
        self._wbits = wbits
        self._method = method
        self._length_error = length_error

    def decompress(self, payload: bytes | memoryview, normal_pages: int) -> bytearray | bytes:
        ch, ps = self.channel, self.page_size
        expected = _shared.expected_size(normal_pages, ps, ch)
        n = normal_pages
        mv = memoryview(payload).cast("B")
        size = len(mv)
        if n == 0:
            if size:
                raise _shared.empty_packet(ch, size)
            return b""
        table = 4 * n
        if size < table:
            raise PayloadSizeError(
                f"multifd {ch}: {self._method} payload of {size} bytes cannot hold the size "
                f"table of {n} pages ({table} bytes)",
                channel=ch,
            )
        sizes = struct.unpack_from(f">{n}I", mv)
        for i, ln in enumerate(sizes):
            if ln == 0 or ln > ps:
                raise PayloadSizeError(
                    f"multifd {ch}: {self._method} page {i} has compressed length {ln}, "
                    f"outside 1..{ps}",
                    channel=ch,
                )
        want = table + sum(sizes)
        if want != size:
            raise _shared.size_mismatch(ch, size, want, "size table vs payload length")
        out = bytearray(expected)
        pos = table
        wbits = self._wbits
        for i, ln in enumerate(sizes):
            chunk = mv[pos:pos + ln]
            pos += ln
            if ln == ps:
                out[i * ps:(i + 1) * ps] = chunk
                continue
            d = zlib.decompressobj(wbits)
            try:
                page = d.decompress(chunk, ps + 1)
            except zlib.error as exc:
                raise CodecError(
                    f"multifd {ch}: {self._method} page {i}: corrupt data ({exc})", channel=ch
                ) from None
            if len(page) != ps:
                raise PayloadSizeError(self._length_error(ch, len(page), ps), channel=ch)
            if not d.eof or d.unused_data or d.unconsumed_tail:
                raise CodecError(
                    f"multifd {ch}: {self._method} page {i}: compressed data does not end "
                    f"exactly at its length {ln}",
                    channel=ch,
                )
            out[i * ps:(i + 1) * ps] = page
        return out


def max_payload(normal_pages: int, page_size: int = TARGET_PAGE_SIZE) -> int:
    """4 bytes of size table plus at most one raw page per normal page."""
    return 4 * normal_pages + normal_pages * page_size
