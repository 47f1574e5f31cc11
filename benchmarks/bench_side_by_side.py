#!/usr/bin/env python3
"""Engine vs real QEMU 7.2, side by side: the same image, channels and compression, one run.

For each method (none, zlib, zstd) the same 1 GiB RAM image (``qatmig_engine.qemu.image``
recipe, seed 1: ~20% zero, 40% text, 30% random, 10% sparse pages) is migrated

* QEMU 7.2 -> QEMU 7.2 (``-S``, TCG, memory-backend-file on /dev/shm, max-bandwidth 100 GiB/s);
* engine -> engine: two processes (like the two QEMUs) running the engine's ``api.send`` /
  ``api.listen`` (what ``qatmig send`` / ``qatmig listen`` call) with ``--dialect qemu-7.2``,

first directly (wall time and CPU), then once more each through a forward-and-count tap for
the bytes on the wire. Wall time runs from ``migrate`` (QEMU) or the call of ``api.send``
until both ends completed. CPU seconds are utime+stime of each end's process over the
migration only: /proc/<pid>/stat for QEMU, getrusage(RUSAGE_SELF) around the api call in the
engine processes (interpreter start-up excluded as QEMU's start-up is; the CLI's whole-guest
sha256 digests are not computed). Every run must end with the destination RAM equal to the
source RAM byte for byte, or the script fails.

    .venv/bin/python benchmarks/bench_side_by_side.py                 # 1 GiB, 2 channels
    .venv/bin/python benchmarks/bench_side_by_side.py --size 256M --repeat 3
    .venv/bin/python benchmarks/bench_side_by_side.py --update-docs   # rewrite our docs section

The machine is a shared 2-vCPU VM: wall times move a lot between runs (see
docs/performance.md); CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qatmig_engine.cli._common import format_table, parse_size
from qatmig_engine.qemu.image import write_image
from qatmig_engine.qemu.interop import InteropRun, engine_to_engine_measured, qemu_to_qemu
from qatmig_engine.qemu.process import find_qemu, qemu_version

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
SECTION = "## Engine vs real QEMU 7.2, side by side (`benchmarks/bench_side_by_side.py`)"


def one(fn: Any, src: str, dst: str, size: int, method: str, channels: int, work: str,
        tap: bool, timeout: float) -> InteropRun:
    Path(dst).unlink(missing_ok=True)
    run: InteropRun = fn(src, dst, size, method, channels, workdir=work, tap=tap,
                         **({"check": False} if fn is qemu_to_qemu else {}), timeout=timeout)
    print(f"  {run.summary()}; cpu src {run.src_cpu_s:.2f} s dst {run.dst_cpu_s:.2f} s",
          file=sys.stderr, flush=True)
    if not (run.completed and run.ram_equal):
        raise SystemExit(f"{run.direction} {method}: not completed or RAM differs\n{run.log}")
    return run


def engine_cpu(run: InteropRun) -> tuple[float | None, float | None]:
    """The engine's own CPU figures (percent of its total time) as CPU seconds."""
    out = []
    for side, key in ((run.source, "send_cpu_percent"), (run.destination, "recv_cpu_percent")):
        pct, ms = side.get(key), side.get("total_time_ms")
        out.append(pct * ms / 100_000 if pct is not None and ms else None)
    return out[0], out[1]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def measure(size: int, channels: int, methods: list[str], repeat: int,
            timeout: float) -> dict[str, Any]:
    results: dict[str, Any] = {
        "qemu_version": qemu_version(), "size": size, "channels": channels,
        "repeat": repeat, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "loadavg_before": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                     time.gmtime()),
        "methods": {},
    }
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="qatmig-sbs-", dir=base) as d:
        src, dst = f"{d}/src.img", f"{d}/dst.img"
        print(f"writing {size >> 20} MiB image", file=sys.stderr, flush=True)
        write_image(src, size, seed=1)
        for method in methods:
            print(f"--- {method}", file=sys.stderr, flush=True)
            rows: dict[str, dict[str, Any]] = {}
            for name, fn in (("qemu", qemu_to_qemu), ("engine", engine_to_engine_measured)):
                runs = [one(fn, src, dst, size, method, channels, d, False, timeout)
                        for _ in range(repeat)]
                counted = one(fn, src, dst, size, method, channels, d, True, timeout)
                own = [engine_cpu(r) for r in runs] if name == "engine" else []
                rows[name] = {
                    "wall_s": med([r.wall_s for r in runs]),
                    "wall_s_all": [round(r.wall_s, 3) for r in runs],
                    "src_cpu_s": med([r.src_cpu_s or 0.0 for r in runs]),
                    "dst_cpu_s": med([r.dst_cpu_s or 0.0 for r in runs]),
                    "wire_bytes": counted.wire_bytes,
                    "own_send_cpu_s": med([o[0] for o in own if o[0] is not None])
                    if any(o[0] is not None for o in own) else None,
                    "own_recv_cpu_s": med([o[1] for o in own if o[1] is not None])
                    if any(o[1] is not None for o in own) else None,
                    "own_total_s": med([r.source.get("total_time_ms", 0) / 1000 for r in runs])
                    if name == "engine" else None,
                    "reported": {k: runs[-1].source.get(k) for k in (
                        "transferred_bytes", "multifd_bytes", "compression_ratio")}
                    if name == "engine" else {k: runs[-1].source.get("ram", {}).get(k)
                                              for k in ("transferred", "multifd-bytes")},
                }
            q, e = rows["qemu"], rows["engine"]
            rows["ratio"] = {
                k: (e[k] / q[k]) if q[k] else None
                for k in ("wall_s", "src_cpu_s", "dst_cpu_s", "wire_bytes")
            }
            results["methods"][method] = rows
    results["loadavg_after"] = os.getloadavg()
    return results


def tap_cost(size: int, channels: int, methods: list[str], timeout: float) -> list[dict[str, Any]]:
    """CPU seconds of a checking ``qatmig tap`` process (start-up included) forwarding a
    QEMU 7.2 -> QEMU 7.2 migration of ``size`` bytes."""
    import select
    import subprocess

    from qatmig_engine.qemu.interop import QATMIG, _wait_rusage
    from qatmig_engine.qemu.process import QemuProcess

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
                     f"127.0.0.1:{port}", "--json", "--timeout", str(timeout)],
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


def table(res: dict[str, Any]) -> str:
    rows = []
    for method, r in res["methods"].items():
        q, e, x = r["qemu"], r["engine"], r["ratio"]
        for who, v in (("QEMU 7.2 -> QEMU 7.2", q), ("qatmig -> qatmig", e)):
            rows.append([method, who, f"{v['wall_s']:.2f}", f"{v['src_cpu_s']:.2f}",
                         f"{v['dst_cpu_s']:.2f}", f"{v['wire_bytes'] / 1e6:.1f}"])
        rows.append([method, "ratio engine/QEMU", f"{x['wall_s']:.2f}x", f"{x['src_cpu_s']:.2f}x",
                     f"{x['dst_cpu_s']:.2f}x", f"{x['wire_bytes']:.3f}x"])
    return format_table(["method", "path", "wall s", "source CPU s", "destination CPU s",
                         "wire MB"], rows)


def markdown(res: dict[str, Any]) -> str:
    size_mib = res["size"] >> 20
    lines = [
        SECTION, "",
        f"Measured {res['started']} on the shared {res['machine']} VM "
        f"(load average {res['loadavg_before'][0]:.2f} before, {res['loadavg_after'][0]:.2f} "
        f"after; above ~1 other work competed for the two cores), {res['qemu_version']}, "
        f"Python {res['python']}. "
        f"Same {size_mib} MiB image (mixed pages: ~20% zero, 40% text, 30% random, 10% sparse), "
        f"{res['channels']} multifd channels, level 1, unthrottled, loopback, in one run. "
        f"Median of {res['repeat']} direct run(s) per cell; wire bytes from one more run "
        "through a forward-and-count tap. Every run ended `completed` with the destination "
        "RAM file equal to the source byte for byte.", "",
        "| method | path | wall s | source CPU s | destination CPU s | bytes on wire (MB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method, r in res["methods"].items():
        q, e, x = r["qemu"], r["engine"], r["ratio"]
        lines.append(f"| {method} | QEMU 7.2 → QEMU 7.2 | {q['wall_s']:.2f} | "
                     f"{q['src_cpu_s']:.2f} | {q['dst_cpu_s']:.2f} | {q['wire_bytes'] / 1e6:.1f} |")
        lines.append(f"| {method} | qatmig → qatmig | {e['wall_s']:.2f} | {e['src_cpu_s']:.2f} | "
                     f"{e['dst_cpu_s']:.2f} | {e['wire_bytes'] / 1e6:.1f} |")
        lines.append(f"| {method} | **engine / QEMU** | **{x['wall_s']:.2f}×** | "
                     f"**{x['src_cpu_s']:.2f}×** | **{x['dst_cpu_s']:.2f}×** | "
                     f"**{x['wire_bytes']:.3f}×** |")
    lines += [
        "",
        "How it is measured: QEMU CPU = utime+stime of each QEMU process over the migration "
        "(/proc/<pid>/stat); engine CPU = utime+stime of each engine process (getrusage) "
        "around its `api.send` / `api.listen` call — the functions `qatmig send` / `qatmig "
        "listen` run — so Python start-up is excluded as QEMU's start-up is, and the CLI's "
        "whole-guest sha256 digests are not computed. The engine's own accounting (its JSON "
        "`send_cpu_percent`/`recv_cpu_percent` × total time) gave: " + ", ".join(
            f"{m} {r['engine']['own_send_cpu_s']:.2f}/{r['engine']['own_recv_cpu_s']:.2f} s"
            for m, r in res["methods"].items()
            if r["engine"]["own_send_cpu_s"] is not None and r["engine"]["own_recv_cpu_s"]
            is not None) + " (send/recv), and its own migration time (from connecting to "
        "completed, without process start-up): " + ", ".join(
            f"{m} {r['engine']['own_total_s']:.2f} s" for m, r in res["methods"].items()
            if r["engine"]["own_total_s"]) + ". "
        "Wall time: from `migrate` (QEMU) or the `api.send` call until both ends "
        "completed. Bytes on the wire: every byte the source wrote on all connections "
        "(main + multifd), counted by `qatmig_engine.tap.TapProxy`; QEMU 7.2's own "
        "`multifd-bytes` counts uncompressed pages and is not used.",
        "",
        "Why the engine writes slightly fewer bytes: QEMU 7.2 also migrates its ROM blocks "
        "(~50 non-zero pages), its device state and VMDESCRIPTION (~0.1 MB on the main "
        "channel), and sends some pages twice (a 7.2 sender race; a 256 MiB check run "
        "through the validating tap counted 197 such pages, 0.8 MB); the engine migrates "
        "`pc.ram` only, each page once.",
        "",
        "Caveats: a noisy shared 2-vCPU VM, so wall times can move by 2× between runs (see "
        "`../shared/spec/performance-anchors.md` §5) and a single run is not a benchmark "
        "result; both ends of each pair share the same 2 vCPUs; CPU seconds are the steadier "
        "figure. Re-run with `--repeat 5` for medians.",
        "",
    ]
    return "\n".join(lines)


def update_docs(text: str) -> None:
    doc = DOC.read_text()
    start = doc.index(SECTION)
    nxt = doc.find("\n## ", start + len(SECTION))
    end = nxt + 1 if nxt >= 0 else len(doc)
    DOC.write_text(doc[:start] + text + ("\n" if nxt >= 0 else "") + doc[end:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["none", "zlib", "zstd"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                    help="do not measure: render a previous --json output (with --update-docs)")
    ap.add_argument("--tap-cost", default=None, metavar="SIZE",
                    help="only measure the CPU cost of a checking `qatmig tap` on a QEMU->QEMU "
                    "migration of SIZE (e.g. 256M)")
    ap.add_argument("--update-docs", action="store_true",
                    help="rewrite the 'Engine vs real QEMU 7.2' section of docs/performance.md")
    args = ap.parse_args(argv)
    if find_qemu() is None and args.from_json is None:
        print("qemu-system-x86_64 not found: apt-get install qemu-system-x86", file=sys.stderr)
        return 2
    if args.tap_cost is not None:
        rows = tap_cost(parse_size(args.tap_cost), args.channels, args.methods, args.timeout)
        print(json.dumps(rows, indent=2) if args.json else format_table(
            ["method", "tap CPU s", "wire MB"],
            [[r["method"], f"{r['tap_cpu_s']:.2f}", f"{r['wire_bytes'] / 1e6:.1f}"]
             for r in rows]))
        return 0
    if args.from_json is not None:
        res = json.loads(args.from_json.read_text())
    else:
        res = measure(parse_size(args.size), args.channels, args.methods, args.repeat,
                      args.timeout)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print(table(res))
    if args.update_docs:
        update_docs(markdown(res))
        print(f"updated {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
