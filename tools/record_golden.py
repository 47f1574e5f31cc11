#!/usr/bin/env python3
"""Record the golden QEMU 7.2 multifd captures under fixtures/golden/qemu-7.2/.

For each method (none, zlib, zstd) a real QEMU 7.2 source (``-S``, RAM in a
memory-backend-file filled by the deterministic recipe of ``qatmig_engine.qemu.image``)
migrates into a real QEMU 7.2 destination through the tap, which records each connection's
bytes in accept order (``conn-0`` is the main channel). The destination RAM must equal the
source RAM. Each capture is stored xz-compressed, and ``manifest.json`` lists the QEMU
version, parameters, the recipe, sha256 of the source RAM and of every capture, and QEMU's
own counters. Tests decode the captures without QEMU (tests/test_golden_qemu72.py).

    .venv/bin/python tools/record_golden.py                # all methods, 8 MiB, 2 channels
    .venv/bin/python tools/record_golden.py --methods zstd --size 16M
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import hashlib
import json
import lzma
import shutil
import sys
import tempfile
from pathlib import Path

from qatmig_engine.cli._common import parse_size
from qatmig_engine.qemu.image import RECIPE, write_image
from qatmig_engine.qemu.process import QemuProcess, find_qemu, qemu_version
from qatmig_engine.tap import TapChecker, TapProxy, format_report

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fixtures" / "golden" / "qemu-7.2"
#: Few random pages: keeps the xz-compressed captures small while every page kind occurs.
GOLDEN_MIX = (35, 45, 3, 17)


def record_one(method: str, size: int, channels: int, seed: int, mix: tuple[int, ...],
               out: Path, work: Path) -> dict[str, object]:
    src_img, dst_img = work / "src.img", work / "dst.img"
    dst_img.unlink(missing_ok=True)
    ram_sha = write_image(src_img, size, seed, mix)
    rec = work / f"rec-{method}"
    shutil.rmtree(rec, ignore_errors=True)
    with QemuProcess(ram_file=src_img, ram_size=size, name="src", workdir=work / "q-src") as src, \
         QemuProcess(ram_file=dst_img, ram_size=size, incoming=True, name="dst",
                     workdir=work / "q-dst") as dst:
        for q in (src, dst):
            q.setup_migration(channels=channels, compression=method)
        port = dst.migrate_incoming()
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", port),
                       TapChecker(channels=channels, method=method), timeout=30,
                       record_dir=rec)
        tport = tap.start()
        src.migrate(f"tcp:127.0.0.1:{tport}")
        src_info = src.wait_migration(120)
        dst.wait_migration(120)
        report = tap.wait(60)
        blocks = [{"name": b.name, "used_length": b.used_length} for b in src.ram_blocks()]
        machine = src.machine_type()
    print(format_report(report))
    if not report.ok:
        raise SystemExit(f"{method}: the tap found deviations; not recording")
    if not filecmp.cmp(src_img, dst_img, shallow=False):
        raise SystemExit(f"{method}: destination RAM differs from the source")
    files = []
    mdir = out / method
    mdir.mkdir(parents=True, exist_ok=True)
    for old in mdir.glob("conn-*.bin.xz"):
        old.unlink()
    for i, c in enumerate(report.channels):
        raw = (rec / f"conn-{i}.bin").read_bytes()
        name = f"{method}/conn-{i}.bin.xz"
        (out / name).write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        files.append({
            "file": name, "connection": i, "role": c.role, "channel": c.channel,
            "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
        })
    ram = src_info.get("ram", {})
    notes = {n.kind: n.count for n in report.notes}
    return {
        "multifd_compression": method,
        "connections": files,
        "qemu_query_migrate_source": {
            k: ram.get(k) for k in ("total", "normal", "duplicate", "dirty-sync-count",
                                    "multifd-bytes", "transferred")
        },
        "tap": {
            "eos": report.eos,
            "sync_packets_per_channel": {str(c.channel): c.sync_packets
                                         for c in report.channels if c.role == "multifd"},
            "pages": report.totals()["pages"],
            "payload_bytes": report.totals()["payload_bytes"],
            "zero_pages_on_main": report.channels[0].zero_pages,
            "pages_sent_twice": notes.get("page-sent-twice", 0),
        },
        "ramblocks": blocks,
        "machine_type": machine,
        "source_ram_sha256": ram_sha,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--size", default="8M", help="guest RAM (default 8M)")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--seed", type=int, default=72)
    ap.add_argument("--methods", nargs="+", default=["none", "zlib", "zstd"])
    args = ap.parse_args(argv)
    if find_qemu() is None:
        print("qemu-system-x86_64 not found: apt-get install qemu-system-x86", file=sys.stderr)
        return 2
    size = parse_size(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    captures = {c["multifd_compression"]: c for c in manifest.get("captures", [])}
    with tempfile.TemporaryDirectory(prefix="qatmig-golden-", dir="/dev/shm") as tmp:
        for method in args.methods:
            print(f"--- recording {method}")
            captures[method] = record_one(method, size, args.channels, args.seed, GOLDEN_MIX,
                                          args.out, Path(tmp))
    first = next(iter(captures.values()))
    manifest = {
        "about": "multifd migrations recorded from a real QEMU 7.2 (tools/record_golden.py); "
                 "each connection's source->destination bytes in accept order, xz-compressed",
        "qemu_version": qemu_version(),
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "dialect": "qemu-7.2",
        "machine": "pc",
        "machine_type": first["machine_type"],
        "ramblock": "pc.ram",
        "command_line": "qemu-system-x86_64 -accel tcg -machine pc,memory-backend=pc.ram "
                        "-m SIZE -object memory-backend-file,id=pc.ram,size=SIZE,mem-path=FILE,"
                        "share=on -display none -nodefaults -S -qmp unix:SOCK,server=on,wait=off"
                        " (destination adds -incoming defer)",
        "parameters": {"multifd-channels": args.channels, "max-bandwidth": 100 << 30,
                       "multifd-zlib-level": 1, "multifd-zstd-level": 1},
        "ram": {
            "size": size,
            "recipe": {"function": RECIPE, "size": size, "seed": args.seed,
                       "mix": list(GOLDEN_MIX), "mix_order": ["zero", "text", "random", "sparse"]},
            "sha256": first["source_ram_sha256"],
        },
        "captures": [captures[m] for m in ("none", "zlib", "zstd") if m in captures],
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in args.out.rglob("*.xz"))
    print(f"wrote {manifest_path} ({total} bytes of captures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
