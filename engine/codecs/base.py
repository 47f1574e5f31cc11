"""The one small interface every multifd compression method implements.

A method is a :class:`CodecSpec` (static facts + factories). Each multifd channel owns one
:class:`Compressor` (source) or :class:`Decompressor` (destination); streaming methods (zlib,
zstd) keep state across the packets of their channel, the others do not. Everything here is
pure: bytes in, bytes out, no sockets, threads or files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..constants import TARGET_PAGE_SIZE


class Compressor(ABC):
    """Per-channel send state: turns a packet's normal pages into its payload."""

    #: Set by the factory; used in error messages (``multifd %u: ...``).
    channel: int = 0

    @abstractmethod
    def compress(self, pages: memoryview | bytes) -> bytes | memoryview:
        """Compress ``pages`` (normal_pages x page_size bytes, contiguous) to one payload.

        Called once per packet with the whole packet (never page by page). Raises CodecError.
        """

    def compress_parts(self, parts: list[memoryview]) -> bytes | memoryview | None:
        """Compress one packet given as pieces of guest memory (its runs of contiguous normal
        pages, in order), or return None: then the caller gathers the pieces into a private
        buffer and calls :meth:`compress`. A method overrides this only when it copies its
        input before returning (so a page the guest changes later cannot corrupt the stream)
        and the output equals :meth:`compress` of the gathered pages."""
        return None

    def compress_view(self, pages: memoryview | bytes) -> bytes | memoryview:
        """Like :meth:`compress`, but the result may be a view of a buffer the compressor
        reuses (as QEMU deflates into one ``zbuff``): valid only until the next call on this
        compressor, so the caller sends it at once. Default: :meth:`compress`."""
        return self.compress(pages)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (hardware sessions); idempotent."""


class Decompressor(ABC):
    """Per-channel receive state: turns one payload back into exactly the packet's pages."""

    channel: int = 0

    @abstractmethod
    def decompress(self, payload: bytes | memoryview, normal_pages: int) -> bytes | memoryview:
        """Return exactly ``normal_pages * page_size`` bytes.

        Must stop as soon as output would exceed that bound (decompression bombs), and raise
        :class:`~qatmig_engine.errors.PayloadSizeError` when the payload yields more or fewer
        bytes, :class:`~qatmig_engine.errors.CodecError` when it is corrupt. Never anything else.
        """

    def decompress_into(self, payload: bytes | memoryview, normal_pages: int,
                        out: memoryview, runs: Sequence[tuple[int, int]] | None = None) -> None:
        """Like :meth:`decompress`, writing the pages into ``out`` (e.g. a RAM block): into
        its byte ranges ``runs`` (``(start, end)``, in order; default all of ``out``), whose
        lengths add up to ``normal_pages * page_size`` (ValueError otherwise). Methods that
        can decode in place override this (no intermediate object); after an error the
        ranges hold garbage."""
        data = memoryview(self.decompress(payload, normal_pages))
        runs = [(0, len(out))] if runs is None else runs
        if sum(e - s for s, e in runs) != len(data):
            raise ValueError(f"decompress_into: the ranges hold {sum(e - s for s, e in runs)} "
                             f"bytes, not {len(data)}")
        pos = 0
        for s, e in runs:
            out[s:e] = data[pos : pos + e - s]
            pos += e - s

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; idempotent."""


@dataclass(frozen=True)
class CodecSpec(ABC):
    """Static facts about one method plus factories for its per-channel state."""

    name: str  # multifd-compression value: none, zlib, zstd, qatzip, qpl, uadk
    flag: int  # MULTIFD_FLAG_* bit
    level_parameter: str | None  # e.g. "multifd-zlib-level"; None when the method has none
    level_range: tuple[int, int] | None
    default_level: int | None
    streaming: bool  # state carries across the packets of one channel

    @abstractmethod
    def new_compressor(
        self, level: int | None = None, *, page_size: int = TARGET_PAGE_SIZE, channel: int = 0,
        **options: Any,
    ) -> Compressor:
        """Fresh send state for one channel (``level`` None = the method's default)."""

    @abstractmethod
    def new_decompressor(
        self, *, page_size: int = TARGET_PAGE_SIZE, channel: int = 0, **options: Any
    ) -> Decompressor:
        """Fresh receive state for one channel."""

    @abstractmethod
    def max_payload(self, normal_pages: int, page_size: int = TARGET_PAGE_SIZE) -> int:
        """Largest ``next_packet_size`` a receiver accepts for a packet of ``normal_pages``.

        Bounds every allocation driven by the header before any payload byte is read.
        """
