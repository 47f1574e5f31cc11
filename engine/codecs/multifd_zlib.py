"""multifd-compression=zlib (QEMU's multifd-zlib.c).

One zlib-wrapped deflate stream per channel for the whole migration: ``deflateInit(level)``
once, every packet ends with ``Z_SYNC_FLUSH`` (so every payload ends ``00 00 ff ff``), the stream
is never finished (no Adler-32). Only the channel's first payload starts with the zlib header
(``78 01`` at levels 0-1). Packets of one channel decode only in order, with one persistent
inflate stream.
"""

from __future__ import annotations

import zlib

from ..constants import (
    DEFAULT_MIGRATE_MULTIFD_ZLIB_LEVEL,
    MULTIFD_FLAG_ZLIB,
)
from ..errors import CodecError
from . import _shared
from .base import Compressor, Decompressor

_SYNC_FLUSH_MARKER = b"\x00\x00\xff\xff"


class ZlibCompressor(Compressor):
    """Per-channel deflate stream; one ``compress`` + one ``Z_SYNC_FLUSH`` per packet."""

    def __init__(self, level: int, channel: int) -> None:
        self.level = level
        self.channel = channel
        self._z = zlib.compressobj(level)

    def compress(self, pages: memoryview | bytes) -> bytes:
        if not len(pages):
            return b""  # a packet without normal pages has no payload
        z = self._z
        return z.compress(pages) + z.flush(zlib.Z_SYNC_FLUSH)


class ZlibDecompressor(Decompressor):
    """Per-channel inflate stream, output bounded at the packet's size (+1 byte to detect more).

    After any error the stream state is unknown, so the decompressor refuses further packets.
    """

    def __init__(self, page_size: int, channel: int) -> None:
        self.page_size = page_size
        self.channel = channel
        self._z = zlib.decompressobj()
        self._broken: str | None = None

    def decompress(self, payload: bytes | memoryview, normal_pages: int) -> bytes:
        ch = self.channel
        n = len(payload)
        expected = _shared.stream_payload_check("zlib", ch, self._broken, n, normal_pages,
                                                self.page_size)
        if expected == 0:
            return b""
        if payload[-4:] != _SYNC_FLUSH_MARKER:
            # Every Z_SYNC_FLUSH ends with this empty stored block; without it the payload is
            # cut short or has bytes after the flush that inflate would take for the next packet.
            self._broken = "bad packet end"
            raise CodecError(
                f"multifd {ch}: payload does not end with the Z_SYNC_FLUSH marker 00 00 ff ff "
                f"(ends {bytes(payload[-4:]).hex(' ')})",
                channel=ch,
            )
        z = self._z
        try:
            out = z.decompress(payload, expected + 1)
        except zlib.error as exc:
            self._broken = "inflate error"
            raise CodecError(
                f"multifd {ch}: inflate returned an error instead of Z_OK ({exc})", channel=ch
            ) from None
        if len(out) != expected:
            self._broken = "size mismatch"
            if len(out) > expected:
                raise _shared.size_mismatch(
                    ch, len(out), expected,
                    "payload inflates to more than the packet; stopped at the bound",
                )
            raise _shared.size_mismatch(ch, len(out), expected, "inflate generated too few output")
        if z.unconsumed_tail:  # not reachable with max_length = expected + 1; kept as a guard
            self._broken = "leftover input"
            raise CodecError(
                f"multifd {ch}: {len(z.unconsumed_tail)} payload bytes left after the packet's "
                f"{expected} bytes",
                channel=ch,
            )
        if z.eof:
            self._broken = "stream finished"
            raise CodecError(
                f"multifd {ch}: inflate returned Z_STREAM_END instead of Z_OK (the sender "
                f"finished its zlib stream; QEMU's never ends)",
                channel=ch,
            )
        return out


SPEC = _shared.StreamSpec(
    name="zlib", flag=MULTIFD_FLAG_ZLIB, level_parameter="multifd-zlib-level",
    level_range=(0, 9), default_level=DEFAULT_MIGRATE_MULTIFD_ZLIB_LEVEL, streaming=True,
    compressor_cls=ZlibCompressor, decompressor_cls=ZlibDecompressor,
)
