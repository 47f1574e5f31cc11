"""multifd-compression=none (QEMU's multifd-nocomp.c): the payload is the raw normal pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..constants import MULTIFD_FLAG_NOCOMP, TARGET_PAGE_SIZE
from . import _shared
from .base import CodecSpec, Compressor, Decompressor


class NocompCompressor(Compressor):
    """Sends the pages as they are (no copy)."""

    def __init__(self, channel: int) -> None:
        self.channel = channel

    def compress(self, pages: memoryview | bytes) -> bytes | memoryview:
        return pages


class NocompDecompressor(Decompressor):
    """Checks that the payload is exactly ``normal_pages * page_size`` bytes."""

    def __init__(self, page_size: int, channel: int) -> None:
        self.page_size = page_size
        self.channel = channel

    def decompress(self, payload: bytes | memoryview, normal_pages: int) -> bytes | memoryview:
        expected = _shared.expected_size(normal_pages, self.page_size, self.channel)
        if len(payload) != expected:
            raise _shared.size_mismatch(self.channel, len(payload), expected)
        return payload


@dataclass(frozen=True)
class NocompSpec(CodecSpec):
    def new_compressor(self, level: int | None = None, *, page_size: int = TARGET_PAGE_SIZE,
                       channel: int = 0, **options: Any) -> Compressor:
        _shared.check_no_level(self.name, level)
        _shared.check_page_size(page_size)
        _shared.check_options(self.name, options)
        return NocompCompressor(channel)

    def new_decompressor(self, *, page_size: int = TARGET_PAGE_SIZE, channel: int = 0,
                         **options: Any) -> Decompressor:
        _shared.check_options(self.name, options)
        return NocompDecompressor(_shared.check_page_size(page_size), channel)

    def max_payload(self, normal_pages: int, page_size: int = TARGET_PAGE_SIZE) -> int:
        return normal_pages * page_size


SPEC = NocompSpec(
    name="none", flag=MULTIFD_FLAG_NOCOMP, level_parameter=None, level_range=None,
    default_level=None, streaming=False,
)
