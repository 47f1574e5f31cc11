#!/usr/bin/env python3
"""Engine vs real QEMU side by side: now ``qatmig bench`` (``qatmig_engine.bench``).

This script keeps its old options and forwards them to ``qatmig bench`` with the image the
side-by-side runs always used (the mixed-page image of ``qatmig_engine.qemu.image``, seed 1)
and a counting tap for the bytes on the wire; every QEMU found (``--qemu PATH``, repeatable;
default the one on PATH) gets a column, the engine speaking each one's dialect:

    .venv/bin/python benchmarks/bench_side_by_side.py                 # 1 GiB, 2 channels
    .venv/bin/python benchmarks/bench_side_by_side.py --size 256M --repeat 3
    .venv/bin/python benchmarks/bench_side_by_side.py --tap-cost 256M # a checking tap's CPU

The one thing ``qatmig bench`` does not do, the CPU cost of a checking ``qatmig tap`` in the
middle of a QEMU -> QEMU migration, stays here (``--tap-cost``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from qatmig_engine.cli._common import format_table, parse_size
from qatmig_engine.qemu.image import write_image
from qatmig_engine.qemu.process import find_qemu


def tap_cost(size: int, channels: int, methods: list[str], timeout: float) -> list[dict[str, Any]]:
    """CPU seconds of a checking ``qatmig tap`` process (start-up included) forwarding a
    QEMU 7.2 -> QEMU 7.2 migration of ``size`` bytes."""
    import select
    import subprocess

    from qatmig_engine.bench import dialect_for_version
    from qatmig_engine.qemu.interop import QATMIG, _wait_rusage
    from qatmig_engine.qemu.process import QemuProcess, qemu_version

    # The tap judges the peers' dialect (its default is the newest): QEMU's own.
    dialect = dialect_for_version(qemu_version(find_qemu()))
    out = []
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="qatmig-tapcost-", dir=base) as d:
        write_image(f"{d}/src.img", size, seed=1)
        for method in methods:
            Path(f"{d}/dst.img").unlink(missing_ok=True)
            with QemuProcess(ram_file=f"{d}/src.img", ram_size=size, name="src",
                             workdir=f"{d}/s") as src, \
                 QemuProcess(ram_file=f"{d}/dst.img", ram_size=size, incoming=True,
                             name="dst", workdir=f"{d}/t") as dst:
                for q in (src, dst):
                    q.setup_migration(channels=channels, compression=method)
                port = dst.migrate_incoming()
                tap = subprocess.Popen(
                    [*QATMIG, "tap", "--listen", "127.0.0.1:0", "--forward",
                     f"127.0.0.1:{port}", "--dialect", dialect, "--json", "--timeout",
                     str(timeout)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                assert tap.stderr is not None and tap.stdout is not None
                if not select.select([tap.stderr], [], [], 30)[0]:
                    tap.kill()
                    raise SystemExit("qatmig tap did not start")
                line = tap.stderr.readline()
                tport = int(line.split("127.0.0.1:")[1].split(",")[0])
                src.migrate(f"tcp:127.0.0.1:{tport}")
                src.wait_migration(timeout)
                dst.wait_migration(timeout)
                report = json.loads(tap.stdout.read())
                cpu = _wait_rusage(tap, timeout)
            if not report["ok"]:
                raise SystemExit(f"tap found deviations: {report['errors']}")
            row = {"method": method, "tap_cpu_s": round(cpu, 3),
                   "wire_bytes": report["totals"]["wire_bytes"]}
            print(f"  tap cost {method}: {row}", file=sys.stderr, flush=True)
            out.append(row)
    return out


#: What the tap-cost figures describe (a change here makes the docs block say so).
TAP_CODE = ["engine/tap.py", "engine/wire.py", "engine/mainstream.py", "engine/codecs",
            "engine/cli/tap.py", "benchmarks/bench_side_by_side.py"]
SCRIPT = "benchmarks/bench_side_by_side.py --tap-cost SIZE --update-docs"
ROOT = Path(__file__).resolve().parent.parent


def tap_cost_markdown(rows: list[dict[str, Any]], size: int, channels: int, qemu: str,
                      load: list[float]) -> str:
    costs = ", ".join(f"{r['tap_cpu_s']:.2f} for {r['method']}" for r in rows)
    return (
        f"Cost: checking a {size >> 20} MiB QEMU→QEMU migration ({channels} channels, the "
        f"mixed-page test image of `qatmig_engine.qemu.image`, seed 1) took the `qatmig tap` "
        f"process {costs} CPU-s, start-up included ({qemu}; one run each; load average "
        f"{load} at the end). The tap decompresses every payload."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["none", "zlib", "zstd"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--qemu", action="append", default=None, metavar="PATH",
                    help="a QEMU to compare with (repeatable; default: the one on PATH)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("-o", "--output", default="bench-results", metavar="DIR")
    ap.add_argument("--tap-cost", default=None, metavar="SIZE",
                    help="only measure the CPU cost of a checking `qatmig tap` on a QEMU->QEMU "
                    "migration of SIZE (e.g. 256M)")
    ap.add_argument("--update-docs", action="store_true",
                    help="with --tap-cost: write the result into docs/qemu-interop.md, stamped "
                    "with the commit measured (the side-by-side tables are `qatmig bench`'s)")
    args = ap.parse_args(argv)
    if args.update_docs and args.tap_cost is None:
        print("--update-docs: only the --tap-cost figures are written by this script; the "
              "side-by-side tables come from `qatmig bench`", file=sys.stderr)
        return 2
    qemus = args.qemu or ([q] if (q := find_qemu()) else [])
    if not qemus:
        print("qemu-system-x86_64 not found: apt-get install qemu-system-x86", file=sys.stderr)
        return 2
    if args.tap_cost is not None:
        from qatmig_engine.docstamp import stamp, write_block
        from qatmig_engine.qemu.process import qemu_version

        stamped = stamp(TAP_CODE, ROOT)
        size = parse_size(args.tap_cost)
        rows = tap_cost(size, args.channels, args.methods, args.timeout)
        if args.update_docs:
            md = tap_cost_markdown(rows, size, args.channels, qemu_version(qemus[0]),
                                   [round(x, 2) for x in os.getloadavg()])
            write_block(ROOT / "docs" / "qemu-interop.md", "tap-cost", md, script=SCRIPT,
                        code=TAP_CODE, root=ROOT, stamped=stamped)
        print(json.dumps(rows, indent=2) if args.json else format_table(
            ["method", "tap CPU s", "wire MB"],
            [[r["method"], f"{r['tap_cpu_s']:.2f}", f"{r['wire_bytes'] / 1e6:.1f}"]
             for r in rows]))
        return 0
    from qatmig_engine.cli import main as qatmig

    return qatmig([
        "bench", "--guest", "mixed", "--guest-size", args.size, "--channels",
        str(args.channels), "--multifd-compression", ",".join(args.methods),
        "--impl", ",".join(["engine", *[f"qemu:{q}" for q in qemus]]),
        "--repeat", str(args.repeat), "--timeout", str(args.timeout), "--count-wire",
        "-o", args.output, *(["--json"] if args.json else [])])


if __name__ == "__main__":
    sys.exit(main())
