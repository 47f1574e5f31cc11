#!/usr/bin/env python3
"""Record the golden multifd captures of a real QEMU under fixtures/golden/<dialect>/.

For each method (none, zlib, zstd) a real QEMU source (``-S``, RAM in a
memory-backend-file filled by the deterministic recipe of ``qatmig_engine.qemu.image``)
migrates into a real QEMU destination of the same binary through the tap, which records each
connection's bytes in accept order (``conn-0`` is the main channel). The destination RAM must
equal the source RAM. Each capture is stored xz-compressed, and ``manifest.json`` lists the QEMU
version, parameters, the recipe, sha256 of the source RAM and of every capture, and QEMU's
own counters. Tests decode the captures without QEMU (tests/test_golden_qemu72.py,
tests/test_golden_qemu10.py).

    .venv/bin/python tools/record_golden.py                # QEMU 7.2: all methods, 8 MiB, 2 ch
    .venv/bin/python tools/record_golden.py --methods zstd --size 16M
    .venv/bin/python tools/record_golden.py --qemu 10.0    # QEMU 10.0 (qatmig_engine.qemu.fetch),
                                                           # zero-page-detection multifd
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
from qatmig_engine.qemu.fetch import QemuUnavailable, ensure_qemu10
from qatmig_engine.qemu.image import RECIPE, write_image
from qatmig_engine.qemu.process import QemuProcess, find_qemu, qemu_version
from qatmig_engine.tap import TapChecker, TapProxy, format_report

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden"
#: Few random pages: keeps the xz-compressed captures small while every page kind occurs.
GOLDEN_MIX = (35, 45, 3, 17)


def record_one(method: str, size: int, channels: int, seed: int, mix: tuple[int, ...],
               out: Path, work: Path, *, binary: str | None = None, dialect: str = "qemu-7.2",
               zero_page_detection: str | None = None) -> dict[str, object]:
    src_img, dst_img = work / "src.img", work / "dst.img"
    dst_img.unlink(missing_ok=True)
    ram_sha = write_image(src_img, size, seed, mix)
    rec = work / f"rec-{method}"
    shutil.rmtree(rec, ignore_errors=True)
    with QemuProcess(ram_file=src_img, ram_size=size, name="src", binary=binary,
                     workdir=work / "q-src") as src, \
         QemuProcess(ram_file=dst_img, ram_size=size, incoming=True, name="dst",
                     binary=binary, workdir=work / "q-dst") as dst:
        for q in (src, dst):
            q.setup_migration(channels=channels, compression=method,
                              zero_page_detection=zero_page_detection)
        port = dst.migrate_incoming()
        tap = TapProxy(("127.0.0.1", 0), ("127.0.0.1", port),
                       TapChecker(dialect=dialect, channels=channels, method=method),
                       timeout=30, record_dir=rec)
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
        "zero_page_detection": zero_page_detection,
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
            "commands": list(report.commands),
        },
        "ramblocks": blocks,
        "machine_type": machine,
        "source_ram_sha256": ram_sha,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qemu", default=None, metavar="PATH|10.0",
                    help="qemu-system-x86_64 to record (default: the system's 7.2); '10.0' "
                    "fetches QEMU 10.0 with qatmig_engine.qemu.fetch")
    ap.add_argument("--zero-page-detection", default=None,
                    help="set on both QEMUs (9.0+; default multifd for 10.0, unset for 7.2)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default fixtures/golden/<dialect>")
    ap.add_argument("--size", default="8M", help="guest RAM (default 8M)")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--seed", type=int, default=72)
    ap.add_argument("--methods", nargs="+", default=["none", "zlib", "zstd"])
    args = ap.parse_args(argv)
    binary = args.qemu
    if binary == "10.0":
        try:
            binary = str(ensure_qemu10(log=True).wrapper)
        except QemuUnavailable as exc:
            print(f"QEMU 10.0: {exc}", file=sys.stderr)
            return 2
    if find_qemu(binary) is None:
        print(f"{binary or 'qemu-system-x86_64'} not found: apt-get install qemu-system-x86",
              file=sys.stderr)
        return 2
    version = qemu_version(binary)
    major = version.split("version ")[-1].split(".")[0]
    dialect = "qemu-10.0" if major.isdigit() and int(major) >= 10 else "qemu-7.2"
    zpd = args.zero_page_detection or ("multifd" if dialect != "qemu-7.2" else None)
    if args.out is None:
        args.out = GOLDEN / dialect
    size = parse_size(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    captures = {c["multifd_compression"]: c for c in manifest.get("captures", [])}
    with tempfile.TemporaryDirectory(prefix="qatmig-golden-", dir="/dev/shm") as tmp:
        for method in args.methods:
            print(f"--- recording {method}")
            captures[method] = record_one(method, size, args.channels, args.seed, GOLDEN_MIX,
                                          args.out, Path(tmp), binary=binary, dialect=dialect,
                                          zero_page_detection=zpd)
    first = next(iter(captures.values()))
    manifest = {
        "about": f"multifd migrations recorded from a real {version.split(' (')[0]} "
                 "(tools/record_golden.py); each connection's source->destination bytes in "
                 "accept order, xz-compressed",
        "qemu_version": version,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "dialect": dialect,
        "machine": "pc",
        "machine_type": first["machine_type"],
        "ramblock": "pc.ram",
        "command_line": "qemu-system-x86_64 -accel tcg -machine pc,memory-backend=pc.ram "
                        "-m SIZE -object memory-backend-file,id=pc.ram,size=SIZE,mem-path=FILE,"
                        "share=on -display none -nodefaults -S -qmp unix:SOCK,server=on,wait=off"
                        " (destination adds -incoming defer)" + (
                            "; QEMU 10.0 from Debian bookworm-backports, run with "
                            "QEMU_MODULE_DIR and -L usr/share/qemu -L usr/share/seabios of its "
                            "unpacked root (qatmig_engine.qemu.fetch)"
                            if dialect == "qemu-10.0" else ""),
        "parameters": {"multifd-channels": args.channels, "max-bandwidth": 100 << 30,
                       "multifd-zlib-level": 1, "multifd-zstd-level": 1,
                       **({"zero-page-detection": zpd} if zpd else {})},
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
