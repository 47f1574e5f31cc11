#!/usr/bin/env python3
"""Engine end to end: a 1 GiB Silesia-like guest over loopback, 2 channels, unthrottled.

Measures, in one run (methods and raw bounds interleaved, median of --repeat):

* ``none``: guest RAM moved per second (target: >= 1 GB/s);
* ``zstd`` level 1: engine rate / bound, where the bound is raw zstd compress + decompress of
  the same guest with the same packetisation (one stream per channel, 512 KiB packets) on as
  many threads as channels: ``bound = guest bytes / (wall of compress + wall of decompress)``
  (target: >= 80%);
* destination memory: peak RSS (VmHWM) of a separate ``qatmig listen`` process minus its guest
  mapping, for 2 and 8 channels (target: O(channels x packet size));
* with ``--all-methods``: one migration per method (none, zlib, zstd, qatzip, qpl, uadk) with
  ``verified``.

Images live in /dev/shm and are deleted at the end. The machine is shared: the load average
is recorded with the results. ``--update-docs`` rewrites the stamped "engine" block of
docs/performance.md (``qatmig_engine.docstamp``).

Every configuration also runs into a destination whose RAM holds stale non-zero bytes (what a
reused destination holds): zero pages must then be written, not skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from qatmig_engine.api import migrate_loopback, send
from qatmig_engine.cli._common import parse_size
from qatmig_engine.codecs import get_codec
from qatmig_engine.params import MigrationParameters

ROOT = Path(__file__).resolve().parents[1]
PACKET = 512 * 1024
#: What the figures describe: a change here makes the docs block say "code since changed".
CODE = ["engine/api.py", "engine/source.py", "engine/destination.py", "engine/transport.py",
        "engine/wire.py", "engine/mainstream.py", "engine/guest.py", "engine/codecs",
        "engine/ratelimit.py", "engine/stats.py", "engine/params.py", "engine/dialects.py",
        "benchmarks/bench_engine.py"]
SCRIPT = "benchmarks/bench_engine.py --update-docs"
#: (key, method, destination prealloc, destination stale) per engine configuration.
CONFIGS = (("none", "none", False, False), ("none-prealloc", "none", True, False),
           ("none-stale", "none", False, True), ("zstd", "zstd", False, False),
           ("zstd-prealloc", "zstd", True, False), ("zstd-stale", "zstd", False, True))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def guest_image(size: int, path: Path) -> tuple[Path, str]:
    from qatmig_engine.silesia import cached_guest_image, read_image_info

    cached = cached_guest_image(size, corpus="stand-in")
    corpus = read_image_info(cached).corpus
    shutil.copyfile(cached, path)
    shutil.copyfile(f"{cached}.json", f"{path}.json")
    return path, corpus


def raw_zstd_bound(image: Path, channels: int, level: int = 1) -> dict[str, float]:
    """Wall seconds of raw zstd compress, then decompress, of the whole image on ``channels``
    threads, each thread one stream over every channels-th packet (as the engine deals them)."""
    data = memoryview(image.read_bytes())
    size = len(data)
    spec = get_codec("zstd")
    packets = [(o, min(PACKET, size - o)) for o in range(0, size, PACKET)]
    outs: list[list[bytes]] = [[] for _ in range(channels)]
    cpu = {"c": 0.0, "d": 0.0}

    def comp(ch: int) -> None:
        t = time.thread_time()
        c = spec.new_compressor(level, channel=ch)
        outs[ch] = [bytes(c.compress(data[o : o + n])) for o, n in packets[ch::channels]]
        cpu["c"] += time.thread_time() - t

    def decomp(ch: int) -> None:
        t = time.thread_time()
        d = spec.new_decompressor(channel=ch)
        for (_, n), payload in zip(packets[ch::channels], outs[ch], strict=True):
            d.decompress(payload, n // 4096)
        cpu["d"] += time.thread_time() - t

    def run(fn) -> float:
        ts = [threading.Thread(target=fn, args=(i,)) for i in range(channels)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.perf_counter() - t0

    tc = run(comp)
    td = run(decomp)
    comp_bytes = sum(len(p) for o in outs for p in o)
    return {"compress_s": tc, "decompress_s": td, "bound_Bps": size / (tc + td),
            "ratio": size / comp_bytes, "cpu_s": cpu["c"] + cpu["d"]}


def engine_run(image: Path, method: str, channels: int, *, prealloc: bool = False,
               stale: bool = False) -> dict:
    p = MigrationParameters(multifd_compression=method, multifd_channels=channels,
                            qat_backend="sw")
    st = migrate_loopback(params=p, guest_image=image, timeout=60,
                          destination_prealloc=prealloc, destination_stale=stale)
    j = st.to_json()
    j["cpu_s"] = st.source.cpu_seconds + st.destination.cpu_seconds
    j["guest_Bps"] = st.total_ram_bytes / (st.total_time_ms / 1000) if st.total_time_ms else 0
    return j


def destination_rss(image: Path, size: int, method: str, channels: int) -> dict:
    """Peak RSS of a `qatmig listen` process receiving ``image``, minus its guest."""
    dst = Path("/dev/shm") / f"qatmig-bench-dst-{os.getpid()}.img"
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    common = ["--multifd-compression", method, "--multifd-channels", str(channels),
              "--quiet", "--json", "--timeout", "60"]
    code = "import sys; from qatmig_engine.cli import main; sys.exit(main(sys.argv[1:]))"
    lp = subprocess.Popen([sys.executable, "-c", code, "listen", "--listen",
                           f"127.0.0.1:{port}", "--guest-image", str(dst), "--guest-size",
                           str(size), *common], stdout=subprocess.PIPE, text=True)
    for _ in range(200):  # until the port is bound (a probe connect would be a channel)
        try:
            probe = socket.socket()
            probe.bind(("127.0.0.1", port))
            probe.close()
            time.sleep(0.05)
        except OSError:
            break
    p = MigrationParameters(multifd_compression=method, multifd_channels=channels)
    sst = send("127.0.0.1", port, image, p, timeout=60, digest=False)
    out, _ = lp.communicate(timeout=120)
    d = json.loads(out)
    base = subprocess.run(
        [sys.executable, "-c", "import qatmig_engine.api, qatmig_engine.codecs.multifd_zstd, "
         "zstandard; from qatmig_engine.stats import peak_rss_bytes; print(peak_rss_bytes())"],
        capture_output=True, text=True, check=True)
    dst.unlink(missing_ok=True)
    baseline = int(base.stdout.strip())
    return {"channels": channels, "method": method, "status": d["status"],
            "source_status": sst.status, "peak_rss": d["peak_rss_bytes"], "guest": size,
            "baseline_rss": baseline,
            "overhead": d["peak_rss_bytes"] - size - baseline}


def _free_page_reporting() -> str | None:
    """The page-reporting setting on this kernel's command line, if any (read, not assumed)."""
    try:
        words = Path("/proc/cmdline").read_text().split()
    except OSError:
        return None
    return next((w for w in words if w.startswith("page_reporting.")), None)


def mb(x: float) -> str:
    return f"{x / 1e6:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--all-methods", action="store_true",
                    help="also migrate once with each of the six methods (verified)")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the results into docs/performance.md, stamped with the commit "
                    "measured")
    args = ap.parse_args()
    size = parse_size(args.size)
    ch = args.channels
    from qatmig_engine.docstamp import stamp

    stamped = stamp(CODE, ROOT)
    load0 = _load()
    image, corpus = guest_image(size, Path("/dev/shm") / f"qatmig-bench-src-{os.getpid()}.img")
    res: dict = {"size": size, "channels": ch, "corpus": corpus, "load_start": load0,
                 "stamp": stamped, "runs": {key: [] for key, *_ in CONFIGS}, "bound": []}
    try:
        for i in range(args.repeat):
            for key, method, pre, stale in CONFIGS:
                j = engine_run(image, method, ch, prealloc=pre, stale=stale)
                res["runs"][key].append(j)
                print(f"[{i}] {key}: {j['status']} verified={j['verified']} "
                      f"{j['total_time_ms']:.0f} ms, {mb(j['guest_Bps'])} MB/s guest, "
                      f"send {j['send_cpu_percent']}% recv {j['recv_cpu_percent']}%",
                      file=sys.stderr)
            b = raw_zstd_bound(image, ch)
            res["bound"].append(b)
            print(f"[{i}] raw zstd bound: {mb(b['bound_Bps'])} MB/s (compress "
                  f"{b['compress_s']:.2f} s + decompress {b['decompress_s']:.2f} s)",
                  file=sys.stderr)
        if not args.no_rss:
            res["rss"] = [destination_rss(image, size, "zstd", c) for c in (2, 8)]
            res["rss"].append(destination_rss(image, size, "none", 2))
        if args.all_methods:
            res["all_methods"] = []
            for m in ("none", "zlib", "zstd", "qatzip", "qpl", "uadk"):
                j = engine_run(image, m, ch, stale=True)
                res["all_methods"].append(j)
                print(f"{m}: {j['status']} verified={j['verified']} {j['total_time_ms']:.0f} ms "
                      f"ratio {j['compression_ratio']}", file=sys.stderr)
    finally:
        image.unlink(missing_ok=True)
        Path(f"{image}.json").unlink(missing_ok=True)
    res["load_end"] = _load()
    md = render(res)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        print(md)
    if args.update_docs:
        from qatmig_engine.docstamp import write_block

        write_block(ROOT / "docs" / "performance.md", "engine", md, script=SCRIPT, code=CODE,
                    root=ROOT, stamped=stamped,
                    heading="## Engine end to end (`benchmarks/bench_engine.py`)")
    return 0


def render(res: dict) -> str:
    size = res["size"]
    med = statistics.median

    def m(key: str, field: str) -> float:
        return med([r[field] or 0 for r in res["runs"][key]])

    bound = med([b["bound_Bps"] for b in res["bound"]])
    zstd_rate = m("zstd", "guest_Bps")
    lines = [
        f"{size >> 20} MiB guest ({res['corpus']}), {res['channels']} channels, unthrottled "
        f"loopback, source and destination in one process (`migrate_loopback`), destination "
        f"RAM anonymous; median of {len(res['bound'])} interleaved repetitions. Guest GB/s = "
        "guest RAM / total time (connect to destination complete).",
        "",
        "| method | total ms | guest GB/s | wire Mbps | send CPU % | recv CPU % | ratio | "
        "verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, method, pre, stale in CONFIGS:
        runs = res["runs"].get(key) or []
        if not runs:
            continue
        label = method + (", destination prealloc" if pre else "") + (
            ", stale destination RAM" if stale else "")
        ver = all(r["verified"] for r in runs)
        lines.append(
            f"| {label} | {m(key, 'total_time_ms'):.0f} | {m(key, 'guest_Bps') / 1e9:.2f} | "
            f"{m(key, 'throughput_mbps'):.0f} | {m(key, 'send_cpu_percent'):.0f} | "
            f"{m(key, 'recv_cpu_percent'):.0f} | {m(key, 'compression_ratio'):.2f} | "
            f"{'yes' if ver else 'NO'} |")
    bc = med([b["compress_s"] for b in res["bound"]])
    bd = med([b["decompress_s"] for b in res["bound"]])
    lines += [
        "",
        f"* `none`: **{m('none', 'guest_Bps') / 1e9:.2f} GB/s** of guest RAM (target 1 GB/s); "
        f"with the destination's RAM faulted in beforehand (QEMU's prealloc) "
        f"{m('none-prealloc', 'guest_Bps') / 1e9:.2f} GB/s.",
        f"* `zstd` level 1: raw bound on the same image with {res['channels']} threads = "
        f"{bound / 1e6:.0f} MB/s (compress {bc:.2f} s + decompress {bd:.2f} s wall, median); "
        f"engine {zstd_rate / 1e6:.0f} MB/s = **{100 * zstd_rate / bound:.0f}% of the bound** "
        "(target 80%). Per repetition (engine run and raw bound measured back to back): "
        + ", ".join(f"{100 * r['guest_Bps'] / b['bound_Bps']:.0f}%"
                    for r, b in zip(res["runs"]["zstd"], res["bound"], strict=True)) + "."
        + (f" With the destination's RAM faulted in beforehand (the raw bound writes into "
           f"resident buffers too): engine {m('zstd-prealloc', 'guest_Bps') / 1e6:.0f} MB/s = "
           f"**{100 * m('zstd-prealloc', 'guest_Bps') / bound:.0f}% of the bound**; per "
           "repetition " + ", ".join(
               f"{100 * r['guest_Bps'] / b['bound_Bps']:.0f}%"
               for r, b in zip(res["runs"]["zstd-prealloc"], res["bound"], strict=True)) + "."
           if res["runs"].get("zstd-prealloc") else ""),
        f"* CPU efficiency, zstd (less sensitive to the other tenants than wall time): raw "
        f"compress + decompress {med([b['cpu_s'] for b in res['bound']]):.2f} CPU-s, engine "
        f"(all threads of both sides) {m('zstd', 'cpu_s'):.2f} CPU-s for the same guest: "
        f"engine = **{100 * med([b['cpu_s'] for b in res['bound']]) / m('zstd', 'cpu_s'):.0f}%** "
        "of raw efficiency.",
    ]
    reporting = _free_page_reporting()
    if reporting:
        lines += [
            f"* This machine's kernel command line has `{reporting}` (free page reporting): "
            "memory freed by one run can be handed back to the host, so a fresh "
            "destination's first touch may fault on the host too; compare the rows with a "
            "preallocated destination above.",
        ]
    if "rss" in res:
        lines += ["", "Destination memory (separate `qatmig listen` process, RAM in a /dev/shm "
                  "file, peak RSS = VmHWM):", "",
                  "| method | channels | peak RSS MB | guest MB | baseline MB (python + engine "
                  "imports) | overhead MB |", "|---|---|---|---|---|---|"]
        for r in res["rss"]:
            lines.append(f"| {r['method']} | {r['channels']} | {r['peak_rss'] / 2**20:.0f} | "
                         f"{r['guest'] / 2**20:.0f} | {r['baseline_rss'] / 2**20:.0f} | "
                         f"{r['overhead'] / 2**20:.1f} |")
    if "all_methods" in res:
        lines += ["", f"Each method once (same image, {res['channels']} channels, stale "
                  "destination RAM):", "",
                  "| method | status | total ms | ratio | send CPU % | recv CPU % | verified |",
                  "|---|---|---|---|---|---|---|"]
        for j in res["all_methods"]:
            lines.append(f"| {j['multifd_compression']} | {j['status']} | "
                         f"{j['total_time_ms']:.0f} | {j['compression_ratio']} | "
                         f"{j['send_cpu_percent']} | {j['recv_cpu_percent']} | "
                         f"{j['verified']} |")
    lines += ["", f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
              f"`benchmarks/bench_engine.py`; load average {res['load_start']} at the start, "
              f"{res['load_end']} at the end (a shared 2-vCPU VM: wall-clock figures are noisy; "
              "a load average above ~1 means other work competed for the two cores)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
