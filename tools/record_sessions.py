#!/usr/bin/env python3
"""Record the engine's sessions under fixtures/sessions/<dialect>/<method>/ (replay, fuzzing).

Each session is one migration of a deterministic 512 KiB guest (``qemu.image.build_image``, seed 13)
over 2 channels, from the engine's source through the validating tap into the engine's
destination; each connection's source -> destination bytes are stored xz-compressed, in accept
order, and ``manifest.json`` lists sizes, sha256 and the guest's sha256.

    .venv/bin/python tools/record_sessions.py
    .venv/bin/python tools/record_sessions.py --dialects qemu-9.2 --methods zstd
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import lzma
import sys
import tempfile
from pathlib import Path

from qatmig_engine import __version__
from qatmig_engine.dialects import get_dialect
from qatmig_engine.replay import (
    SESSION_CHANNELS,
    SESSION_DIALECTS,
    SESSION_GUEST_BYTES,
    SESSION_METHODS,
    SESSION_MIX,
    record_session,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fixtures" / "sessions"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--dialects", nargs="+", default=list(SESSION_DIALECTS))
    ap.add_argument("--methods", nargs="+", default=list(SESSION_METHODS))
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {"sessions": []}
    manifest.update({
        "about": "migrations of the engine's source recorded through the tap "
                 "(tools/record_sessions.py): each connection's source->destination bytes "
                 "in accept order (connection 0 = main channel), xz-compressed",
        "guest": {"bytes": SESSION_GUEST_BYTES, "recipe": "qatmig_engine.qemu.image.build_image",
                  "seed": 13, "mix": list(SESSION_MIX), "ramblock": "pc.ram"},
        "multifd_channels": SESSION_CHANNELS,
    })
    keep = [s for s in manifest["sessions"]
            if not (s["dialect"] in args.dialects and s["multifd_compression"] in args.methods)]
    with tempfile.TemporaryDirectory(prefix="qatmig-record-") as tmp:
        for dialect in args.dialects:
            for method in args.methods:
                if method not in get_dialect(dialect).methods:
                    continue
                blobs, digest = record_session(method, dialect, work=Path(tmp))
                d = out / dialect / method
                d.mkdir(parents=True, exist_ok=True)
                conns = []
                for i, raw in enumerate(blobs):
                    name = f"{dialect}/{method}/conn-{i}.bin.xz"
                    (out / name).write_bytes(lzma.compress(raw, preset=9))
                    conns.append({"file": name, "connection": i, "bytes": len(raw),
                                  "sha256": hashlib.sha256(raw).hexdigest()})
                keep.append({"dialect": dialect, "multifd_compression": method,
                             "connections": conns, "guest_sha256": digest,
                             "engine_version": __version__,
                             "recorded_at": datetime.datetime.now(datetime.UTC).strftime(
                                 "%Y-%m-%dT%H:%MZ")})
                print(f"{dialect:10} {method:7} {sum(len(b) for b in blobs):>9} bytes",
                      file=sys.stderr)
    keep.sort(key=lambda s: (s["dialect"], s["multifd_compression"]))
    manifest["sessions"] = keep
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
