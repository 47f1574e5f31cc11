"""Compression ratios the way the published tables measure them (one-shot, whole input).

Codec names are this project's: ``zlib-1``, ``zlib-9`` (stdlib zlib, as ``gzip -1/-9`` minus
the header) and ``zstd-1`` (libzstd through ``zstandard``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from ..errors import ParameterError
from .manifest import RATIO_CODECS


def compressed_size(data: bytes | memoryview, codec: str) -> int:
    """Size of ``data`` compressed in one shot with ``codec`` (``zlib-N`` or ``zstd-N``)."""
    method, _, level_text = codec.partition("-")
    try:
        level = int(level_text)
    except ValueError:
        raise ParameterError(f"codec '{codec}' must look like zlib-1, zlib-9 or zstd-1") from None
    if method == "zlib":
        return len(zlib.compress(data, level))
    if method == "zstd":
        import zstandard

        return len(zstandard.ZstdCompressor(level=level).compress(data))
    raise ParameterError(f"unknown codec '{codec}' (use zlib-N or zstd-N)")


def ratios(data: bytes | memoryview, codecs: Iterable[str] = RATIO_CODECS) -> dict[str, float]:
    """``{codec: len(data) / compressed size}`` for each codec."""
    n = len(data)
    return {c: (n / compressed_size(data, c) if n else 0.0) for c in codecs}


def sizes(data: bytes | memoryview, codecs: Iterable[str] = RATIO_CODECS) -> dict[str, int]:
    """``{codec: compressed size}`` (sum these over files for whole-corpus ratios)."""
    return {c: compressed_size(data, c) for c in codecs}
