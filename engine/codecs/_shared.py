"""Small helpers shared by the multifd codec modules (argument checks, QEMU's error texts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..constants import MULTIFD_RECV_BUFFER_SIZE, TARGET_PAGE_SIZE
from ..errors import CodecError, ParameterError, PayloadSizeError
from .base import CodecSpec, Compressor, Decompressor

#: Largest packet (normal_pages x page_size) a decoder accepts. QEMU never sends more than
#: MULTIFD_PACKET_SIZE (512 KiB); this cap only bounds allocations driven by a bogus header.
MAX_PACKET_BYTES = MULTIFD_RECV_BUFFER_SIZE


def compress_bound(n: int) -> int:
    """Worst-case payload for ``n`` input bytes: ``ceil(9n/8) + 80`` (0 for ``n == 0``).

    This is libqatzip's software ``qzMaxCompressedLength`` (``QZ_SKID_PAD_SZ`` 48 + one 32-byte
    header/footer). It is above zlib's ``deflateBound`` plus the 2-byte zlib header and the
    5-byte sync-flush marker, and above ``ZSTD_compressBound`` plus an 18-byte frame header and
    a flush block, for every ``n``: no conforming peer can send more for ``n`` bytes of pages.
    """
    if n <= 0:
        return 0
    return (9 * n + 7) // 8 + 80


def check_level(method: str, parameter: str, level: int | None, lo: int, hi: int,
                default: int) -> int:
    """``level`` (None = default) validated with QEMU's migrate-set-parameters text."""
    if level is None:
        return default
    if not isinstance(level, int) or isinstance(level, bool) or not lo <= level <= hi:
        raise ParameterError(
            f"Parameter '{parameter.replace('-', '_')}' expects a value between {lo} and {hi}"
        )
    return level


def check_no_level(method: str, level: int | None) -> None:
    if level is not None:
        raise ParameterError(
            f"multifd-compression '{method}' has no level parameter (got level={level!r})"
        )


def check_page_size(page_size: int) -> int:
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size <= 0:
        raise ParameterError(f"page_size must be a positive integer, not {page_size!r}")
    return page_size


def check_options(method: str, options: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        raise ParameterError(
            f"multifd-compression '{method}' does not take option(s) {', '.join(unknown)}"
        )


def expected_size(normal_pages: int, page_size: int, channel: int) -> int:
    """``normal_pages * page_size``, refusing header values no QEMU sends (bounded allocation)."""
    if not isinstance(normal_pages, int) or isinstance(normal_pages, bool) or normal_pages < 0:
        raise PayloadSizeError(
            f"multifd {channel}: normal_pages must be a non-negative integer, "
            f"not {normal_pages!r}",
            channel=channel,
        )
    n = normal_pages * page_size
    if n > MAX_PACKET_BYTES:
        raise PayloadSizeError(
            f"multifd {channel}: {normal_pages} normal pages of {page_size} bytes "
            f"({n} bytes) exceed the largest packet a receiver accepts ({MAX_PACKET_BYTES})",
            channel=channel,
        )
    return n


def size_mismatch(channel: int, received: int, expected: int, detail: str = "") -> PayloadSizeError:
    """QEMU's ``multifd %u: packet size received %u size expected %u`` (+ our detail)."""
    msg = f"multifd {channel}: packet size received {received} size expected {expected}"
    if detail:
        msg += f" ({detail})"
    return PayloadSizeError(msg, channel=channel)


def too_large(channel: int, size: int, bound: int) -> PayloadSizeError:
    """QEMU's ``multifd %u: received unexpectedly large packet`` (+ sizes)."""
    return PayloadSizeError(
        f"multifd {channel}: received unexpectedly large packet ({size} bytes, at most {bound} "
        f"accepted for this packet)",
        channel=channel,
    )


def empty_packet(channel: int, size: int) -> PayloadSizeError:
    return PayloadSizeError(
        f"multifd {channel}: packet with no normal pages carries a {size}-byte payload "
        f"(QEMU asserts next_packet_size == 0 there)",
        channel=channel,
    )


def stream_payload_check(method: str, channel: int, broken: str | None, size: int,
                         normal_pages: int, page_size: int) -> int:
    """Checks the streaming decoders (zlib, zstd) make before touching their stream.

    Returns the exact output size expected (0: a packet without pages, nothing to decode).
    """
    if broken:
        raise CodecError(
            f"multifd {channel}: {method} stream unusable after an earlier error ({broken})",
            channel=channel,
        )
    expected = expected_size(normal_pages, page_size, channel)
    if expected == 0:
        if size:
            raise empty_packet(channel, size)
        return 0
    bound = min(MULTIFD_RECV_BUFFER_SIZE, compress_bound(expected))
    if size > bound:
        raise too_large(channel, size, bound)
    return expected


def output_runs(out_len: int, runs: Sequence[tuple[int, int]] | None,
                expected: int) -> Sequence[tuple[int, int]]:
    """The ``(start, end)`` ranges of a ``decompress_into`` output (None: all of it), checked:
    each inside the output buffer, together exactly the ``expected`` decoded size."""
    runs = [(0, out_len)] if runs is None else runs
    total = 0
    for s, e in runs:
        if not 0 <= s <= e <= out_len:
            raise ValueError(f"decompress_into: range {s}..{e} outside 0..{out_len}")
        total += e - s
    if total != expected:
        raise ValueError(f"decompress_into: the ranges hold {total} bytes, not {expected}")
    return runs


@dataclass(frozen=True)
class StreamSpec(CodecSpec):
    """zlib and zstd: one stream per channel, a level parameter, QEMU's 1 MiB receive buffer.

    The level range and default come from the spec's own fields, so they are stated once.
    """

    compressor_cls: Callable[[int, int], Compressor] | None = field(
        default=None, repr=False, compare=False)
    decompressor_cls: Callable[[int, int], Decompressor] | None = field(
        default=None, repr=False, compare=False)

    def new_compressor(self, level: int | None = None, *, page_size: int = TARGET_PAGE_SIZE,
                       channel: int = 0, **options: Any) -> Compressor:
        lo, hi = self.level_range or (0, 0)
        lvl = check_level(self.name, self.level_parameter or self.name, level, lo, hi,
                          self.default_level or 0)
        check_page_size(page_size)
        check_options(self.name, options)
        if self.compressor_cls is None:  # pragma: no cover - a spec built without classes
            raise ParameterError(f"{self.name}: no compressor")
        return self.compressor_cls(lvl, channel)

    def new_decompressor(self, *, page_size: int = TARGET_PAGE_SIZE, channel: int = 0,
                         **options: Any) -> Decompressor:
        check_options(self.name, options)
        if self.decompressor_cls is None:  # pragma: no cover
            raise ParameterError(f"{self.name}: no decompressor")
        return self.decompressor_cls(check_page_size(page_size), channel)

    def max_payload(self, normal_pages: int, page_size: int = TARGET_PAGE_SIZE) -> int:
        """min(QEMU's 1 MiB receive buffer, ceil(9n/8)+80 for n = normal_pages*page_size)."""
        return min(MULTIFD_RECV_BUFFER_SIZE, compress_bound(normal_pages * page_size))
