"""The recorded real-QEMU multifd captures shipped in ``qatmig_fixtures/golden/<release>``.

``release`` is ``qemu-7.2`` (Debian 12's QEMU; the default), ``qemu-10.0`` (Debian
bookworm-backports, zero-page-detection multifd) or ``qemu-10.0-qatzip`` (QEMU 10.0.2 built with
QATzip, ``tools/record_qatzip.py``). Each capture is one migration (2 channels,
8 MiB guest, none/zlib/zstd) recorded through the tap by ``tools/record_golden.py``: one xz
file per connection in accept order (``conn-0`` is the main channel). ``manifest.json`` says
how the source RAM was made and what QEMU reported.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path
from typing import Any

from qatmig_engine.errors import CorpusError

GOLDEN_SUBDIR = ("golden", "qemu-7.2")
RELEASES = ("qemu-7.2", "qemu-10.0", "qemu-10.0-qatzip")


def golden_dir(release: str = "qemu-7.2") -> Path:
    """Directory of one release's captures (inside the ``qatmig_fixtures`` package data)."""
    import qatmig_fixtures  # data-only package (a namespace package in editable installs)

    for base in list(getattr(qatmig_fixtures, "__path__", [])):
        p = Path(base).joinpath("golden", release)
        if (p / "manifest.json").is_file():
            return p
    raise CorpusError(f"qatmig_fixtures/golden/{release}/manifest.json not found "
                      "(run tools/record_golden.py, or reinstall the package)")


def load_manifest(release: str = "qemu-7.2") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((golden_dir(release) / "manifest.json").read_text())
    data.setdefault("dialect", release)
    data["release"] = release  # the folder, e.g. qemu-10.0-qatzip (its dialect: qemu-10.0)
    return data


def capture_entry(method: str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    m = manifest or load_manifest()
    for c in m["captures"]:
        if c["multifd_compression"] == method:
            return dict(c)
    raise CorpusError(f"no golden capture for multifd-compression {method!r}")


def load_connections(method: str, manifest: dict[str, Any] | None = None) -> list[bytes]:
    """The capture's connections (decompressed, accept order), each checked by sha256."""
    m = manifest or load_manifest()
    entry = capture_entry(method, m)
    base = golden_dir(m.get("release", m.get("dialect", "qemu-7.2")))
    out = []
    for conn in sorted(entry["connections"], key=lambda c: c["connection"]):
        raw = lzma.decompress((base / conn["file"]).read_bytes())
        if hashlib.sha256(raw).hexdigest() != conn["sha256"] or len(raw) != conn["bytes"]:
            raise CorpusError(f"{conn['file']}: sha256/size differ from manifest.json")
        out.append(raw)
    return out
