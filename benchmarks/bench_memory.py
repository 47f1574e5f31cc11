#!/usr/bin/env python3
"""Destination memory overhead per method and channel count (issue 14 item 5: ≤ 4 MiB per
channel at 8 channels, every method).

A destination process (``api.listen``, what ``qatmig listen`` runs, RAM in a /dev/shm file)
receives a Silesia guest from a source process. Its overhead above the guest is

    peak RSS (VmHWM)  -  RSS before listening (interpreter + imports)
                      -  guest pages that became resident (the image file's allocated pages)

so neither the interpreter nor the guest itself counts, whatever share of the guest's pages
were written. Every run must complete with the destination image equal to the source.

    .venv/bin/python benchmarks/bench_memory.py                       # 256 MiB, 8 channels
    .venv/bin/python benchmarks/bench_memory.py --channels 2,8 --update-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _listen_send import listen_and_send
from qatmig_engine.cli._common import format_table, parse_size
from qatmig_engine.silesia import cached_guest_image, open_corpus

MiB = 1 << 20

RUNNER = r"""
import json, sys
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    return out
from qatmig_engine import api
from qatmig_engine.params import MigrationParameters
import zstandard, zlib  # the codecs' libraries count as baseline, like the interpreter
role, port, img, size, method, ch = sys.argv[1:7]
extra = {"qat_backend": "sw"} if method == "qatzip" else {}
params = MigrationParameters(multifd_channels=int(ch), multifd_compression=method, **extra)
before = status()
def ready(addr):
    print("READY", addr[1], flush=True)
if role == "listen":
    st = api.listen("127.0.0.1", int(port), img, int(size), params, ramblock="pc.ram",
                    timeout=120, digest=False, on_ready=ready)
else:
    st = api.send("127.0.0.1", int(port), img, params, ramblock="pc.ram", timeout=120,
                  digest=False)
print(json.dumps({"status": st.status, "error": st.error, "before": before,
                  "after": status()}), flush=True)
"""


def one(src: Path, dst: Path, size: int, method: str, channels: int) -> dict[str, Any]:
    d, _s = listen_and_send(RUNNER, src, dst, size, method, channels, timeout=600)
    b, a = d["before"], d["after"]
    # The guest was unmapped when listen returned; the pages it had resident are the image
    # file's allocated pages (tmpfs allocates a page only when it is written or faulted in).
    guest = os.stat(dst).st_blocks * 512
    overhead = a["VmHWM"] - b["VmRSS"] - guest
    return {"method": method, "channels": channels, "peak_rss": a["VmHWM"],
            "baseline_rss": b["VmRSS"], "guest_resident": guest, "overhead": overhead,
            "overhead_per_channel": overhead / channels}


def measure(size: int, methods: list[str], channels: list[int]) -> dict[str, Any]:
    load0 = os.getloadavg()
    corpus = open_corpus("auto")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="qatmig-mem-", dir=base) as d:
        src = Path(d) / "src.img"
        shutil.copyfile(cached_guest_image(size, corpus), src)
        for ch in channels:
            for m in methods:
                r = one(src, Path(d) / "dst.img", size, m, ch)
                print(f"  {m} x{ch}: overhead {r['overhead'] / MiB:.1f} MiB", file=sys.stderr,
                      flush=True)
                rows.append(r)
    return {"size": size, "corpus": corpus.name, "rows": rows,
            "loadavg": [load0, os.getloadavg()],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


HEADERS = ["method", "channels", "peak RSS MiB", "baseline MiB", "guest resident MiB",
           "overhead MiB", "per channel MiB", "≤ 4 MiB/channel"]


def rows_of(res: dict[str, Any]) -> list[list[str]]:
    return [[r["method"], str(r["channels"]), f"{r['peak_rss'] / MiB:.1f}",
             f"{r['baseline_rss'] / MiB:.1f}", f"{r['guest_resident'] / MiB:.1f}",
             f"{r['overhead'] / MiB:.1f}", f"{r['overhead_per_channel'] / MiB:.2f}",
             "yes" if r["overhead_per_channel"] <= 4 * MiB else "**no**"]
            for r in res["rows"]]


def markdown(res: dict[str, Any]) -> str:
    return "\n".join([
        f"Measured {res['when']} on the shared {res['machine']} machine, Python "
        f"{res['python']}: a {res['size'] >> 20} MiB {res['corpus']} guest received by an "
        "`api.listen` process (what `qatmig listen` runs; RAM in a /dev/shm file) from an "
        "`api.send` process. Overhead = peak RSS (VmHWM) − RSS before listening (interpreter, "
        "engine and codec libraries) − guest pages that became resident (the tmpfs image's "
        "allocated pages). "
        "qatzip uses the software backend.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "---:|" * (len(HEADERS) - 1),
        *("| " + " | ".join(r) + " |" for r in rows_of(res)),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--channels", default="8", help="comma-separated (default 8)")
    ap.add_argument("--methods", default="none,zlib,zstd,qatzip")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the table into docs/performance.md (stamped block memory)")
    args = ap.parse_args(argv)
    from qatmig_engine import docstamp

    root = Path(__file__).resolve().parent.parent
    code = ("engine/destination.py", "engine/codecs", "engine/guest.py",
                  "engine/transport.py", "engine/api.py", "benchmarks/bench_memory.py")
    stamped = docstamp.stamp(code, root)
    res = measure(parse_size(args.size), args.methods.split(","),
                  [int(c) for c in args.channels.split(",")])
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print(format_table(HEADERS, [[c.strip("*") for c in r] for r in rows_of(res)]))
    if args.update_docs:
        docstamp.write_block(
            root / "docs" / "performance.md", "memory", markdown(res),
            script=f"benchmarks/bench_memory.py --size {args.size} --channels {args.channels} "
            f"--methods {args.methods} --update-docs",
            code=code, stamped=stamped,
            root=root, heading="## Destination memory (`benchmarks/bench_memory.py`)")
        print("updated docs/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
