"""qatmig_engine: a reference QEMU multifd live-migration engine (sans-I/O core + TCP edges).

The wire format (:mod:`.wire`), dialects (:mod:`.dialects`), parameters (:mod:`.params`) and
codecs (:mod:`.codecs`) are pure code over bytes; sockets and threads live in the transport
and migration modules. This package never imports pytest.
"""

from __future__ import annotations

__version__ = "0.1.0"
