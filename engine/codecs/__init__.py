"""Registry of the multifd compression methods, one module each (QEMU's multifd-<method>.c)."""

from __future__ import annotations

import importlib

from ..errors import ParameterError
from .base import CodecSpec, Compressor, Decompressor

#: multifd-compression value -> module defining ``SPEC`` (imported on first use).
_MODULES = {
    "none": "multifd_nocomp",
    "zlib": "multifd_zlib",
    "zstd": "multifd_zstd",
    "qatzip": "multifd_qatzip",
    "qpl": "multifd_qpl",
    "uadk": "multifd_uadk",
}

METHODS: tuple[str, ...] = tuple(_MODULES)


def get_codec(name: str) -> CodecSpec:
    """The :class:`CodecSpec` of a multifd-compression method."""
    try:
        mod = _MODULES[name]
    except KeyError:
        raise ParameterError(
            f"Parameter 'multifd-compression' does not accept value '{name}'"
        ) from None
    spec: CodecSpec = importlib.import_module(f"{__name__}.{mod}").SPEC
    return spec


__all__ = ["METHODS", "CodecSpec", "Compressor", "Decompressor", "get_codec"]
