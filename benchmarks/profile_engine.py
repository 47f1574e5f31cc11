#!/usr/bin/env python3
"""Where the engine's CPU time goes, per end and method (issue 14 item 2).

For each method an ``api.send`` process migrates the same RAM image to an ``api.listen``
process (what ``qatmig send``/``listen`` run; 2 channels, RAM in /dev/shm files), each
reporting user and system CPU seconds and minor page faults over the migration only. In the
same run, on the same image, the floors those figures are compared with:

* **codec**: the method's library alone on the image's non-zero pages, one thread, packets of
  128 pages, the stream carried across packets as a channel does (compress for the source,
  decompress for the destination);
* **first touch**: writing one byte into every page the destination receives, in a fresh
  /dev/shm file of the same size (the page faults and zeroing every receiver pays, QEMU too);

so ``engine - codec - first touch`` is what the engine itself adds: socket copies and system
calls, zero-page detection, Python per packet. When QEMU 10.0 is fetched (or ``--qemu PATH``),
each method is also migrated QEMU -> QEMU on the same image in the same run, and each end's
CPU seconds are set against QEMU's (utime+stime from /proc over the migration, as
``qatmig bench`` measures). Numbers are CPU seconds, which other tenants of a shared machine
inflate less than wall time (see the load average).

    .venv/bin/python benchmarks/profile_engine.py                  # 1 GiB mixed image
    .venv/bin/python benchmarks/profile_engine.py --size 256M --update-docs
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import resource
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import zstandard
from _listen_send import listen_and_send
from qatmig_engine.cli._common import format_table, parse_size
from qatmig_engine.qemu.image import write_image

PAGE = 4096
PACKET_PAGES = 128

RUNNER = r"""
import json, resource, sys, time
from qatmig_engine import api
from qatmig_engine.params import MigrationParameters
role, port, img, size, method, ch = sys.argv[1:7]
params = MigrationParameters(multifd_channels=int(ch), multifd_compression=method)
def ru():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt
def ready(addr):
    print("READY", addr[1], flush=True)
end = []
def done(_st):
    end.extend(ru())
u0, s0, f0 = ru()
if role == "listen":
    st = api.listen("127.0.0.1", int(port), img, int(size), params, ramblock="pc.ram",
                    timeout=300, digest=False, on_ready=ready, on_done=done)
else:
    st = api.send("127.0.0.1", int(port), img, params, ramblock="pc.ram", timeout=300,
                  digest=False, on_done=done)
u1, s1, f1 = end
print(json.dumps({"status": st.status, "error": st.error, "user": u1 - u0, "sys": s1 - s0,
                  "minflt": f1 - f0}), flush=True)
"""


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def migrate(src: Path, dst: Path, size: int, method: str, channels: int) -> dict[str, Any]:
    d, s = listen_and_send(RUNNER, src, dst, size, method, channels, timeout=900)
    return {"send": s, "recv": d}


def packets(src: Path) -> list[bytes]:
    """The image's non-zero pages in packets of 128 (what the channels compress)."""
    with open(src, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    mv = memoryview(mm)
    zero = bytes(PAGE)
    pages = [mv[o : o + PAGE] for o in range(0, len(mm), PAGE) if mv[o : o + PAGE] != zero]
    out = [b"".join(pages[i : i + PACKET_PAGES]) for i in range(0, len(pages), PACKET_PAGES)]
    del pages, mv
    mm.close()
    return out


def codec_floor(method: str, pkts: list[bytes]) -> tuple[float, float]:
    """CPU seconds of the library alone: (compress all packets, decompress them)."""
    if method == "none":
        return 0.0, 0.0
    if method == "zstd":
        c = zstandard.ZstdCompressor(level=1).compressobj()
        t0 = sum(_cpu())
        comp = [c.compress(p) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for p in pkts]
        t1 = sum(_cpu())
        d = zstandard.ZstdDecompressor().decompressobj()
        for p in comp:
            d.decompress(p)
        return t1 - t0, sum(_cpu()) - t1
    c2 = zlib.compressobj(1)
    t0 = sum(_cpu())
    comp = [c2.compress(p) + c2.flush(zlib.Z_SYNC_FLUSH) for p in pkts]
    t1 = sum(_cpu())
    d2 = zlib.decompressobj()
    for p in comp:
        d2.decompress(p)
    return t1 - t0, sum(_cpu()) - t1


def first_touch(size: int, pages: int, workdir: Path) -> float:
    """CPU seconds to fault in ``pages`` pages of a fresh /dev/shm file of ``size`` bytes."""
    path = workdir / "touch.img"
    with open(path, "wb") as f:
        f.truncate(size)
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), size)
    t0 = sum(_cpu())
    for o in range(0, pages * PAGE, PAGE):
        mm[o] = 1
    dt = sum(_cpu()) - t0
    mm.close()
    path.unlink()
    return dt


def qemu_cpu(binary: str, src: Path, dst: Path, size: int, method: str,
             channels: int) -> dict[str, float]:
    """QEMU -> QEMU on the same image: CPU seconds of each end over the migration."""
    from qatmig_engine.qemu import interop
    from qatmig_engine.qemu.process import UNLIMITED_BANDWIDTH

    dst.unlink(missing_ok=True)
    r = interop.qemu_to_qemu(str(src), str(dst), size, method, channels,
                             workdir=str(dst.parent), check=False, binary=binary, poll=0.01,
                             max_bandwidth=UNLIMITED_BANDWIDTH, timeout=600)
    if not (r.completed and r.ram_equal):
        raise SystemExit(f"QEMU {method}: {r.summary()}")
    dst.unlink(missing_ok=True)
    return {"send": r.src_cpu_s or 0.0, "recv": r.dst_cpu_s or 0.0}


def default_qemu() -> str | None:
    from qatmig_engine.qemu.fetch import find_qemu10

    q = find_qemu10()
    return str(q.wrapper) if q is not None else None


def measure(size: int, methods: list[str], channels: int,
            qemu: str | None = None) -> dict[str, Any]:
    load0 = os.getloadavg()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="qatmig-prof-", dir=base) as d:
        work = Path(d)
        src = work / "src.img"
        write_image(str(src), size, seed=1)
        pkts = packets(src)
        nonzero = sum(len(p) for p in pkts) // PAGE
        touch = first_touch(size, nonzero, work)
        for m in methods:
            r = migrate(src, work / "dst.img", size, m, channels)
            q = qemu_cpu(qemu, src, work / "qdst.img", size, m, channels) if qemu else {}
            comp, dec = codec_floor(m, pkts)
            for side, floor_codec, floor_touch in (("send", comp, 0.0), ("recv", dec, touch)):
                e = r[side]
                total = e["user"] + e["sys"]
                rows.append({"method": m, "end": side, "user": e["user"], "sys": e["sys"],
                             "total": total, "minflt": e["minflt"], "codec": floor_codec,
                             "first_touch": floor_touch,
                             "engine_own": total - floor_codec - floor_touch,
                             "qemu": q.get(side)})
                print(f"  {m} {side}: {total:.2f} CPU-s (codec {floor_codec:.2f}, first touch "
                      f"{floor_touch:.2f})", file=sys.stderr, flush=True)
    return {"size": size, "channels": channels, "nonzero_pages": nonzero, "rows": rows,
            "qemu": qemu,
            "loadavg": [load0, os.getloadavg()],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


HEADERS = ["method", "end", "engine CPU-s", "user", "system", "minor faults", "codec alone",
           "first touch", "engine's own", "own share", "QEMU 10.0 CPU-s", "engine ÷ QEMU"]


def rows_of(res: dict[str, Any]) -> list[list[str]]:
    def vs(r: dict[str, Any]) -> list[str]:
        q = r.get("qemu")
        return [f"{q:.2f}", f"{r['total'] / q:.2f}x"] if q else ["-", "-"]

    return [[r["method"], r["end"], f"{r['total']:.2f}", f"{r['user']:.2f}", f"{r['sys']:.2f}",
             str(r["minflt"]), f"{r['codec']:.2f}", f"{r['first_touch']:.2f}",
             f"{r['engine_own']:.2f}", f"{r['engine_own'] / r['total']:.0%}", *vs(r)]
            for r in res["rows"]]


def markdown(res: dict[str, Any]) -> str:
    return "\n".join([
        f"Measured {res['when']} on the shared {res['machine']} machine (load average "
        f"{res['loadavg'][0][0]:.2f} before, {res['loadavg'][1][0]:.2f} after), Python "
        f"{res['python']}: the {res['size'] >> 20} MiB mixed image "
        f"({res['nonzero_pages']} non-zero pages), {res['channels']} channels, default "
        "dialect, `api.send` → `api.listen` in two processes, CPU from the call until the "
        "migration ended (before the guest is unmapped, as QEMU's ends at `completed`). "
        "`codec alone`: the library on the same non-zero pages, one thread, 128-page packets, "
        "one stream; `first touch`: faulting in as many pages of a fresh /dev/shm file (what "
        "any receiver pays for new RAM); `engine's own` = the rest (socket copies and system "
        "calls, zero-page detection, Python per packet). `QEMU 10.0 CPU-s`: the same "
        "end of a QEMU 10.0 → QEMU 10.0 migration of the same image in the same run "
        f"({'not run' if not res.get('qemu') else 'utime+stime from /proc'}).",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|---|" + "---:|" * (len(HEADERS) - 2),
        *("| " + " | ".join(r) + " |" for r in rows_of(res)),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--methods", default="none,zlib,zstd")
    ap.add_argument("--qemu", default="auto",
                    help="QEMU to compare each end with: a qemu-system-x86_64 path, 'auto' "
                    "(the fetched QEMU 10.0, if any) or 'none'")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the table into docs/performance.md (stamped block profile)")
    args = ap.parse_args(argv)
    from qatmig_engine import docstamp

    root = Path(__file__).resolve().parent.parent
    code = ("engine/source.py", "engine/destination.py", "engine/codecs",
                  "engine/guest.py", "engine/transport.py", "engine/wire.py",
                  "benchmarks/profile_engine.py")
    stamped = docstamp.stamp(code, root)
    qemu = {"auto": default_qemu, "none": lambda: None}.get(args.qemu, lambda: args.qemu)()
    res = measure(parse_size(args.size), args.methods.split(","), args.channels, qemu)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print(format_table(HEADERS, rows_of(res)))
    if args.update_docs:
        docstamp.write_block(
            root / "docs" / "performance.md", "profile", markdown(res),
            script=f"benchmarks/profile_engine.py --size {args.size} --channels "
            f"{args.channels} --methods {args.methods} --update-docs",
            code=code, stamped=stamped,
            root=root, heading="## Where the engine's time goes (`benchmarks/profile_engine.py`)")
        print("updated docs/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
