#!/usr/bin/env python3
"""Record multifd-compression qatzip sessions of a real QEMU built with QATzip.

Debian's QEMU has no QATzip, so this needs a qemu-system-x86_64 configured with
``--enable-qatzip`` against libqatzip (see ../shared/spec/qemu-10.0-observed.md for how such a
build was made; the build itself is not part of this repository). For each level and direction
(QEMU -> QEMU, QEMU -> engine, engine -> QEMU) one migration runs through the tap, which records
each connection's bytes; the destination RAM must equal the source RAM. Captures are stored
xz-compressed under ``--out`` with ``manifest.json`` (QEMU version, the libqatzip version you
name, parameters, the RAM recipe and sha256, QEMU's counters, QEMU's stderr lines from
libqatzip). tests/test_golden_qatzip.py decodes them without QEMU.

    .venv/bin/python tools/record_qatzip.py --qemu /path/to/qemu-system-x86_64 \\
        --firmware /root/.cache/qatmig/qemu-10.0/root --libqatzip "QATzip v1.3.1 (...)"
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import lzma
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from qatmig_engine.cli._common import parse_size
from qatmig_engine.qemu.image import RECIPE, write_image
from qatmig_engine.qemu.interop import engine_to_qemu, qemu_to_engine, qemu_to_qemu
from qatmig_engine.qemu.process import qemu_version
from qatmig_engine.tap import format_report

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fixtures" / "golden" / "qemu-10.0-qatzip"
DIRECTIONS = {"qemu-qemu": qemu_to_qemu, "qemu-engine": qemu_to_engine,
              "engine-qemu": engine_to_qemu}
#: Few random pages: keeps the captures small while every page kind occurs.
MIX = (35, 45, 3, 17)
DIALECT = "qemu-10.0"


def _wrapper(qemu: str, firmware_root: Path | None, work: Path) -> str:
    """A script adding -L for QEMU's firmware (a source build has none of its own here)."""
    if firmware_root is None:
        return qemu
    script = work / "qemu-qatzip"
    script.write_text(
        "#!/bin/sh\n"
        f"exec '{qemu}' -L '{firmware_root}/usr/share/qemu' "
        f"-L '{firmware_root}/usr/share/seabios' \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def _qatzip_lines(workdir: Path) -> list[str]:
    lines: list[str] = []
    for log in sorted(workdir.rglob("*.stderr")):
        for line in log.read_text(errors="replace").splitlines():
            if line.strip() and line not in lines:
                lines.append(line)
    return lines


def record_one(direction: str, level: int, size: int, channels: int, seed: int, binary: str,
               out: Path, work: Path, method: str = "qatzip") -> dict[str, Any]:
    name = f"{direction}-l{level}"
    src_img, dst_img = work / "src.img", work / "dst.img"
    dst_img.unlink(missing_ok=True)
    ram_sha = write_image(src_img, size, seed, MIX)
    rec, wd = work / f"rec-{name}", work / f"wd-{name}"
    shutil.rmtree(rec, ignore_errors=True)
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir()
    run = DIRECTIONS[direction](
        str(src_img), str(dst_img), size, method, channels, workdir=str(wd), tap=True,
        timeout=120, binary=binary, dialect=DIALECT, level=level, record_dir=str(rec))
    report = run.tap
    assert report is not None
    print(run.summary())
    print(format_report(report))
    if not (run.completed and run.ram_equal and report.ok):
        raise SystemExit(f"{name}: not recorded ({run.summary()})\n{run.log[-2000:]}")
    mdir = out / name
    mdir.mkdir(parents=True, exist_ok=True)
    for old in mdir.glob("conn-*.bin.xz"):
        old.unlink()
    files = []
    for i, c in enumerate(report.channels):
        raw = (rec / f"conn-{i}.bin").read_bytes()
        fname = f"{name}/conn-{i}.bin.xz"
        (out / fname).write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        files.append({"file": fname, "connection": i, "role": c.role, "channel": c.channel,
                      "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
    qemu_side = run.source if direction != "engine-qemu" else {}
    ram = qemu_side.get("ram", {})
    totals = report.totals()
    return {
        "name": name,
        "direction": direction,
        "multifd_compression": method,
        f"multifd_{method}_level": level,
        "connections": files,
        "qemu_query_migrate_source": {k: ram.get(k) for k in (
            "total", "normal", "duplicate", "dirty-sync-count", "multifd-bytes",
            "transferred")} if ram else None,
        "tap": {"pages": totals["pages"], "payload_bytes": totals["payload_bytes"],
                "zero_pages": totals["zero_pages"], "commands": list(report.commands),
                "notes": {n.kind: n.count for n in report.notes}},
        "ramblocks": dict(report.ramblocks),
        "machine_type": report.machine_type,
        "source_ram_sha256": ram_sha,
        "qemu_stderr": _qatzip_lines(wd),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qemu", required=True, help="qemu-system-x86_64 built with QATzip")
    ap.add_argument("--firmware", type=Path, default=None, metavar="ROOT",
                    help="an unpacked Debian QEMU 10.0 root whose firmware to pass with -L")
    ap.add_argument("--libqatzip", required=True,
                    help="what the QEMU links against, recorded verbatim in the manifest")
    ap.add_argument("--build", default="", help="how QEMU was configured (recorded verbatim)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--size", default="4M")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 9])
    ap.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=DIRECTIONS)
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    captures = []
    with tempfile.TemporaryDirectory(prefix="qatmig-qz-", dir="/dev/shm") as tmp:
        binary = _wrapper(args.qemu, args.firmware, Path(tmp))
        version = qemu_version(binary)
        for level in args.levels:
            for direction in args.directions:
                print(f"--- recording {direction} level {level}")
                captures.append(record_one(direction, level, size, args.channels, args.seed,
                                           binary, args.out, Path(tmp)))
    manifest = {
        "about": "multifd-compression qatzip sessions recorded from a real QEMU built with "
                 "QATzip (tools/record_qatzip.py); each connection's source->destination bytes "
                 "in accept order, xz-compressed",
        "qemu_version": version,
        "qemu_build": args.build,
        "libqatzip": args.libqatzip,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "dialect": DIALECT,
        "machine": "pc",
        "ramblock": "pc.ram",
        "parameters": {"multifd-channels": args.channels, "multifd-compression": "qatzip",
                       "multifd-qatzip-level": args.levels, "max-bandwidth": 100 << 30},
        "ram": {"size": size,
                "recipe": {"function": RECIPE, "size": size, "seed": args.seed,
                           "mix": list(MIX), "mix_order": ["zero", "text", "random", "sparse"]},
                "sha256": captures[0]["source_ram_sha256"]},
        "captures": captures,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in args.out.rglob("*.xz"))
    print(f"wrote {args.out / 'manifest.json'} ({total} bytes of captures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
