"""multifd-compression=qatzip (QEMU 9.2+ multifd-qatzip.c).

Per packet, the normal pages are gathered into one buffer and compressed with one
``qzCompress(..., last=1)`` call; the output (QATzip gzip-ext, see :mod:`.qzformat`) is the whole
payload. No state carries between packets, so any packet decodes on its own. Level 1..9,
default 1. The receiver refuses payloads above its 1 MiB buffer ("received unexpectedly large
packet") and requires exactly ``normal_pages * page_size`` bytes of output.

The sender compresses with a ``QzEngine`` from the QAT layer (``qz=``: an object with
``name: str`` and ``compress(data, level) -> bytes``) or, with ``qz=None``, with this package's
software producer, byte-exact with libqatzip's software path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..constants import (
    DEFAULT_MIGRATE_MULTIFD_QATZIP_LEVEL,
    MULTIFD_FLAG_QATZIP,
    MULTIFD_PACKET_SIZE,
    MULTIFD_RECV_BUFFER_SIZE,
    TARGET_PAGE_SIZE,
)
from ..errors import CodecError, PayloadSizeError, QatmigError
from . import _shared, qzformat
from .base import CodecSpec, Compressor, Decompressor


class QzEngine(Protocol):
    """A QATzip compressor supplied by the QAT layer (hardware session or a software one)."""

    name: str

    def compress(self, data: bytes | memoryview, level: int) -> bytes:
        """One standalone gzip-ext buffer for ``data`` (one ``qzCompress(last=1)``)."""
        ...


class QatzipCompressor(Compressor):
    """One ``qzCompress(last=1)``-equivalent buffer per packet."""

    def __init__(self, level: int, channel: int, qz: QzEngine | None) -> None:
        self.level = level
        self.channel = channel
        self.qz = qz
        self.engine_name = "software" if qz is None else qz.name

    def compress(self, pages: memoryview | bytes) -> bytes:
        ch = self.channel
        n = len(pages)
        if not n:
            return b""
        if n > MULTIFD_PACKET_SIZE:
            raise CodecError(f"multifd {ch}: unexpectedly large input ({n} bytes)", channel=ch)
        if self.qz is None:
            return qzformat.compress(pages, self.level)
        try:
            out = self.qz.compress(pages, self.level)
        except QatmigError:
            raise
        except Exception as exc:  # a backend bug must not escape as a random type
            raise CodecError(
                f"multifd {ch}: QATzip engine {self.engine_name} failed: {exc!r}", channel=ch
            ) from exc
        if len(out) > MULTIFD_RECV_BUFFER_SIZE:
            raise CodecError(
                f"multifd {ch}: QATzip engine {self.engine_name} produced {len(out)} bytes, "
                f"more than a receiver accepts ({MULTIFD_RECV_BUFFER_SIZE})",
                channel=ch,
            )
        return out

    def close(self) -> None:
        close = getattr(self.qz, "close", None)
        if callable(close):
            close()


class QatzipDecompressor(Decompressor):
    """Decodes any gzip-ext/gzip layout (software one member, hardware one per 64 KiB, ...)."""

    def __init__(self, page_size: int, channel: int) -> None:
        self.page_size = page_size
        self.channel = channel

    def decompress(self, payload: bytes | memoryview, normal_pages: int) -> bytes:
        ch = self.channel
        n = len(payload)
        # QEMU checks the size against its 1 MiB buffer before anything else.
        if n > MULTIFD_RECV_BUFFER_SIZE:
            raise _shared.too_large(ch, n, MULTIFD_RECV_BUFFER_SIZE)
        expected = _shared.expected_size(normal_pages, self.page_size, ch)
        if expected == 0:
            if n:
                raise _shared.empty_packet(ch, n)
            return b""
        try:
            out = qzformat.decompress(payload, max_output=expected)
        except PayloadSizeError as exc:
            raise _shared.size_mismatch(ch, expected + 1, expected, str(exc)) from None
        except CodecError as exc:
            raise CodecError(f"multifd {ch}: qzDecompress failed: {exc}", channel=ch) from None
        if len(out) != expected:
            raise _shared.size_mismatch(ch, len(out), expected)
        return out


@dataclass(frozen=True)
class QatzipSpec(CodecSpec):
    def new_compressor(self, level: int | None = None, *, page_size: int = TARGET_PAGE_SIZE,
                       channel: int = 0, qz: QzEngine | None = None,
                       **options: Any) -> Compressor:
        lvl = _shared.check_level(self.name, "multifd-qatzip-level", level, 1, 9,
                                  DEFAULT_MIGRATE_MULTIFD_QATZIP_LEVEL)
        _shared.check_page_size(page_size)
        _shared.check_options(self.name, options)
        return QatzipCompressor(lvl, channel, qz)

    def new_decompressor(self, *, page_size: int = TARGET_PAGE_SIZE, channel: int = 0,
                         **options: Any) -> Decompressor:
        _shared.check_options(self.name, options)
        return QatzipDecompressor(_shared.check_page_size(page_size), channel)

    def max_payload(self, normal_pages: int, page_size: int = TARGET_PAGE_SIZE) -> int:
        """QEMU's receive buffer, 1 MiB (its only check); 0 when there are no normal pages.

        No tighter compress bound here: a QAT device's output bound (cpaDcDeflateCompressBound
        per 64 KiB member) is not the software formula, and QEMU accepts anything up to 1 MiB.
        """
        return MULTIFD_RECV_BUFFER_SIZE if normal_pages > 0 else 0


SPEC = QatzipSpec(
    name="qatzip", flag=MULTIFD_FLAG_QATZIP, level_parameter="multifd-qatzip-level",
    level_range=(1, 9), default_level=DEFAULT_MIGRATE_MULTIFD_QATZIP_LEVEL, streaming=False,
)
