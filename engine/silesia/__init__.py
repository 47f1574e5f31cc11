"""Silesia guest memory: the real corpus (verified), the deterministic stand-in, guest images.

Stable API (imported lazily, so ``import qatmig_engine.silesia`` stays cheap)::

    from qatmig_engine.silesia import (
        build_guest_image, cached_guest_image, guest_image_bytes, map_guest_image,
        read_image_info, sample_ratios, GuestImageInfo, open_corpus, download_silesia,
        STANDIN_NAME, REAL_NAME,
    )

See :mod:`.image` (guest images), :mod:`.corpus` (real corpus, download),
:mod:`.standin` (generator), :mod:`.manifest` (the published table) and docs/guest-memory.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_guest_image": "image", "cached_guest_image": "image", "guest_image_bytes": "image",
    "map_guest_image": "image", "read_image_info": "image", "sample_ratios": "image",
    "iter_guest_runs": "image", "GuestImageInfo": "image", "PAGE_SIZE": "image",
    "open_corpus": "corpus", "download_silesia": "corpus", "find_silesia": "corpus",
    "verify_directory": "corpus", "verify_zip": "corpus", "cache_dir": "corpus",
    "Corpus": "corpus", "STANDIN_NAME": "corpus", "REAL_NAME": "corpus",
    "SILESIA_FILES": "manifest", "PUBLISHED_TOTALS": "manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
