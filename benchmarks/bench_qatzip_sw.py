#!/usr/bin/env python3
"""qatzip's software path: the byte-exact zlib producer vs ISA-L (``--qat-sw-engine isal``).

Each Silesia file (the real corpus when ``$QATMIG_SILESIA`` or the cache has it, else the
calibrated stand-in) is cut into multifd packets of 128 pages (512 KiB); every packet is
compressed by both software engines of ``qatmig_engine.qat.backend`` exactly as a migration
channel calls them (one gzip-ext buffer per packet, level 1 unless ``--level``), interleaved
packet by packet so that both see the same machine load. Throughput is uncompressed MB per
CPU-second of the compressing thread (``time.thread_time``), which other tenants of the
machine do not inflate; every output is inflated again and compared with its input.

    .venv/bin/python benchmarks/bench_qatzip_sw.py                  # 8 MiB of each file
    .venv/bin/python benchmarks/bench_qatzip_sw.py --limit 0 --update-docs   # whole corpus
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from qatmig_engine.cli._common import format_table, parse_size
from qatmig_engine.qat.backend import IsalQzEngine, SoftwareQzEngine
from qatmig_engine.silesia import open_corpus

PACKET = 128 * 4096
ENGINES = (("zlib", SoftwareQzEngine), ("isal", IsalQzEngine))


def measure(limit: int | None, level: int, corpus_spec: str = "auto") -> dict[str, Any]:
    corpus = open_corpus(corpus_spec)
    engines = {name: cls() for name, cls in ENGINES}
    load0 = os.getloadavg()
    rows = []
    for member in corpus.files():
        data = corpus.read(member, limit)
        stats = {name: {"cpu_s": 0.0, "out": 0} for name in engines}
        for off in range(0, len(data), PACKET):
            packet = memoryview(data)[off : off + PACKET]
            for name, eng in engines.items():
                t0 = time.thread_time()
                out = eng.compress(packet, level)
                stats[name]["cpu_s"] += time.thread_time() - t0
                stats[name]["out"] += len(out)
                if zlib.decompress(out, 31) != packet:  # one gzip member per packet
                    raise SystemExit(f"{name}: {member} packet at {off} does not round-trip")
        rows.append({"file": member, "bytes": len(data), **{
            name: {"ratio": len(data) / s["out"], "mb_s": len(data) / 1e6 / s["cpu_s"],
                   "cpu_s": s["cpu_s"], "out": s["out"]} for name, s in stats.items()}})
    total = sum(r["bytes"] for r in rows)
    summary = {name: {
        "ratio": total / sum(r[name]["out"] for r in rows),
        "mb_s": total / 1e6 / sum(r[name]["cpu_s"] for r in rows),
    } for name in engines}
    return {
        "corpus": corpus.name, "level": level, "packet": PACKET, "limit": limit,
        "bytes": total, "rows": rows, "total": summary,
        "loadavg": [load0, os.getloadavg()],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(), "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _cells(r: dict[str, Any]) -> list[str]:
    z, i = r["zlib"], r["isal"]
    return [f"{z['ratio']:.3f}", f"{i['ratio']:.3f}",
            f"{(i['ratio'] / z['ratio'] - 1) * 100:+.1f}%",
            f"{z['mb_s']:.0f}", f"{i['mb_s']:.0f}", f"{i['mb_s'] / z['mb_s']:.2f}x"]


HEADERS = ["file", "MB", "ratio zlib", "ratio isal", "isal ratio vs zlib", "zlib MB/s",
           "isal MB/s", "isal speed-up"]


def rows_of(res: dict[str, Any]) -> list[list[str]]:
    out = [[r["file"], f"{r['bytes'] / 1e6:.1f}", *_cells(r)] for r in res["rows"]]
    out.append(["**all**", f"{res['bytes'] / 1e6:.1f}", *_cells(res["total"])])
    return out


def markdown(res: dict[str, Any]) -> str:
    t = res["total"]
    speed = t["isal"]["mb_s"] / t["zlib"]["mb_s"]
    loss = (1 - t["isal"]["ratio"] / t["zlib"]["ratio"]) * 100
    lines = [
        f"Measured {res['when']} on the shared {res['machine']} machine (load average "
        f"{res['loadavg'][0][0]:.2f} before, {res['loadavg'][1][0]:.2f} after), Python "
        f"{res['python']}, zlib {res['zlib']}. Corpus: {res['corpus']}"
        + (f", the first {res['limit'] >> 20} MiB of each file" if res["limit"] else "")
        + f"; packets of {res['packet'] >> 10} KiB, qatzip level {res['level']}, one gzip-ext "
        "buffer per packet as a migration channel makes it; both engines on the same packets, "
        "interleaved; MB/s = uncompressed MB per CPU-second of the compressing thread; every "
        "output inflated and compared.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "---:|" * (len(HEADERS) - 1),
        *("| " + " | ".join(r) + " |" for r in rows_of(res)),
        "",
        f"ISA-L: **{speed:.2f}×** the zlib producer's throughput (target ≥ 3×) at a ratio "
        f"{abs(loss):.1f}% {'below' if loss > 0 else 'above'} it (target: at most 5% below): "
        + ("both met." if speed >= 3 and loss <= 5 else
           "speed target " + ("met" if speed >= 3 else "missed") + ", ratio target "
           + ("met." if loss <= 5 else "missed.")),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", default="8M",
                    help="bytes of each Silesia file (0 = whole files; default 8M)")
    ap.add_argument("--level", type=int, default=1, help="qatzip level 1..9 (default 1)")
    ap.add_argument("--corpus", default="auto", help="auto | silesia | stand-in | DIR")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the table into docs/performance.md (stamped block qatzip-sw)")
    args = ap.parse_args(argv)
    from qatmig_engine import docstamp

    root = Path(__file__).resolve().parent.parent
    code = ("engine/qat/backend.py", "engine/codecs/qzformat.py",
                  "benchmarks/bench_qatzip_sw.py")
    stamped = docstamp.stamp(code, root)
    limit = parse_size(args.limit) or None
    res = measure(limit, args.level, args.corpus)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print(format_table(HEADERS, [[c.strip("*") for c in r] for r in rows_of(res)]))
    if args.update_docs:
        cmd = "benchmarks/bench_qatzip_sw.py" + (f" --limit {args.limit}" if args.limit else "") \
            + (f" --level {args.level}" if args.level != 1 else "") + " --update-docs"
        docstamp.write_block(
            root / "docs" / "performance.md", "qatzip-sw", markdown(res), script=cmd,
            code=code, stamped=stamped,
            root=root, heading="## qatzip software path: zlib producer vs ISA-L "
            "(`benchmarks/bench_qatzip_sw.py`)")
        print("updated docs/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
