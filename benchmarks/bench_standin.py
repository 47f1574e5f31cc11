#!/usr/bin/env python3
"""Silesia stand-in: generation speed and ratio table (stand-in vs published).

    python benchmarks/bench_standin.py                 # full corpus: MB/s + ratio table
    python benchmarks/bench_standin.py --limit 2M      # first 2 MiB of each file (quick)
    python benchmarks/bench_standin.py --write-docs    # also rewrite the tables in docs/
    python benchmarks/bench_standin.py --calibrate     # re-fit KNOBS (zlib-9 = gzip --best)
    python benchmarks/bench_standin.py --pin           # rewrite fixtures/silesia/manifest.json
    python benchmarks/bench_standin.py --json > r.json; ... --from-json r.json --write-docs

Ratios are one-shot over whole files (as lzbench and the per-file table do); the corpus ratio
is total size / sum of compressed sizes. Generation speed is wall time of
``standin.generate_file`` for every file, in 10**6 bytes per second, with the pools built
beforehand (first use builds them once per process; that time is reported separately).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from qatmig_engine.cli._common import parse_size
from qatmig_engine.silesia import standin
from qatmig_engine.silesia.manifest import PUBLISHED_TOTALS, RATIO_CODECS, SILESIA_FILES
from qatmig_engine.silesia.ratios import compressed_size, sizes

ROOT = Path(__file__).resolve().parent.parent

#: Per-file knob search ranges and direction (+1: ratio grows with the knob).
KNOB_RANGE = {
    "dickens": (0, 62000), "webster": (0, 62000), "reymont": (0, 62000), "samba": (0, 62000),
    "xml": (0, 62000), "mozilla": (0, 65535), "ooffice": (0, 65535), "nci": (0, 65535),
    "osdb": (0, 65535), "sao": (0, 65535), "mr": (16, 8000), "x-ray": (1, 4000),
}


def calibrate(names: list[str], sample: int) -> dict[str, int]:
    out = {}
    for f in SILESIA_FILES:
        if f.name not in names:
            continue
        lo, hi = KNOB_RANGE[f.name]

        def ratio(k: int, name: str = f.name) -> float:
            data = standin.generate_file(name, sample, knob=k)
            return len(data) / compressed_size(data, "zlib-9")

        r_lo, r_hi = ratio(lo), ratio(hi)
        up = r_hi > r_lo
        a, b = lo, hi
        while b - a > 1:
            mid = (a + b) // 2
            r = ratio(mid)
            if (r < f.gzip_best) == up:
                a = mid
            else:
                b = mid
        best = min((a, b), key=lambda k: abs(ratio(k) - f.gzip_best))
        out[f.name] = best
        print(f"{f.name:8} knob {best:6d}  zlib-9 {ratio(best):.4f}  target {f.gzip_best}  "
              f"(range {r_lo:.3f}..{r_hi:.3f})", flush=True)
    return out


def measure(limit: int | None, reps: int, with_ratios: bool = True) -> dict:
    from qatmig_engine.docstamp import stamp

    stamped = stamp(CODE, ROOT)
    t0 = time.perf_counter()
    for f in SILESIA_FILES:
        standin.segment(f.name, 0)  # builds the word/instruction pools once
    warm = time.perf_counter() - t0
    times = []
    cpu = []
    data = {}
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        for f in SILESIA_FILES:
            data[f.name] = standin.generate_file(f.name, limit)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    total = sum(len(d) for d in data.values())
    base = {"stamp": stamped, "bytes": total, "limit": limit, "pool_build_s": warm, "gen_s": times,
            "gen_mbps": total / statistics.median(times) / 1e6, "cpu_s": cpu,
            "cpu_mbps": total / statistics.median(cpu) / 1e6, "load_avg": os.getloadavg(),
            "python": platform.python_version(), "generator": standin.CORPUS_NAME}
    if not with_ratios:
        return base
    rows = []
    sums = dict.fromkeys(RATIO_CODECS, 0)
    for f in SILESIA_FILES:
        d = data.pop(f.name)
        s = sizes(d, RATIO_CODECS)
        for c in RATIO_CODECS:
            sums[c] += s[c]
        rows.append({"file": f.name, "bytes": len(d), "gzip_best_published": f.gzip_best,
                     **{c: len(d) / s[c] for c in RATIO_CODECS}})
    # whole-corpus ratio: sum of sizes / sum of compressed sizes; on a sample each file is
    # weighted by its real size (size / sample ratio), so the estimate has Silesia's mix
    full = sum(f.size for f in SILESIA_FILES)
    totals = {c: full / sum(f.size / r[c] for f, r in zip(SILESIA_FILES, rows, strict=True))
              for c in RATIO_CODECS}
    return {**base, "files": rows, "totals": totals}


def pin() -> dict:
    """sha256 of every stand-in file, its first and last segment (the determinism pin)."""
    files = {}
    for f in SILESIA_FILES:
        data = standin.generate_file(f.name)
        last = (f.size - 1) // standin.SEGMENT
        files[f.name] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "first_segment_sha256": hashlib.sha256(data[: standin.SEGMENT]).hexdigest(),
            "last_segment": last,
            "last_segment_sha256": hashlib.sha256(data[last * standin.SEGMENT:]).hexdigest(),
        }
    return {"generator": standin.CORPUS_NAME, "segment": standin.SEGMENT,
            "knobs": standin.KNOBS, "files": files}


def ratio_markdown(res: dict) -> str:
    lines = ["| file | MB | zlib-9 stand-in | gzip --best published | diff | zlib-1 | zstd-1 |",
             "|---|---|---|---|---|---|---|"]
    for r in res["files"]:
        diff = r["zlib-9"] / r["gzip_best_published"] - 1
        lines.append(f"| {r['file']} | {r['bytes'] / 1e6:.2f} | {r['zlib-9']:.3f} | "
                     f"{r['gzip_best_published']:.3f} | {diff:+.1%} | {r['zlib-1']:.3f} | "
                     f"{r['zstd-1']:.3f} |")
    lines += ["", "| codec | stand-in (whole corpus) | published (lzbench, silesia.tar) | diff |",
              "|---|---|---|---|"]
    for c in RATIO_CODECS:
        t = res["totals"][c]
        lines.append(f"| {c} | {t:.3f} | {PUBLISHED_TOTALS[c]:.3f} | "
                     f"{t / PUBLISHED_TOTALS[c] - 1:+.1%} |")
    scope = ("whole files" if res["limit"] is None else
             f"first {res['limit']:,} B of each file; totals weight each file by its real size")
    lines += ["", f"Measured by `benchmarks/bench_standin.py` on {scope} "
              f"({res['bytes']:,} B), {res['generator']}, Python {res['python']}."]
    return "\n".join(lines)


def perf_markdown(runs: list[dict]) -> str:
    """The generation-speed section: one row per run (the machine is shared; load varies)."""
    first = runs[0]
    lines = [
        f"Generating the whole stand-in ({first['generator']}, {first['bytes']:,} B, 12 files) "
        "with `standin.generate_file`, one thread, on the shared 2-vCPU machine (the load "
        "average column shows how busy it was). Each run generates the corpus "
        f"{len(first['gen_s'])} times (median); \"per CPU-second\" divides by this process' "
        "CPU time, which the other workloads do not inflate.",
        "",
        "| run | load average (1/5/15 min, at the end) | wall clock | per CPU-second | wall s "
        "| CPU s | share of a CPU | pool build (once per process) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, res in enumerate(runs, 1):
        share = statistics.median(res["cpu_s"]) / statistics.median(res["gen_s"])
        lines.append(
            f"| {i} | {' / '.join(f'{x:.1f}' for x in res['load_avg'])} | "
            f"**{res['gen_mbps']:.0f} MB/s** | **{res['cpu_mbps']:.0f} MB/s** | "
            f"{', '.join(f'{t:.2f}' for t in res['gen_s'])} | "
            f"{', '.join(f'{t:.2f}' for t in res['cpu_s'])} | {share:.0%} | "
            f"{res['pool_build_s']:.2f} s |")
    wall_ok = sum(r["gen_mbps"] >= 50 for r in runs)
    cpu_ok = sum(r["cpu_mbps"] >= 50 for r in runs)
    lines += ["", f"Target 50 MB/s: met per CPU-second in {cpu_ok} of {len(runs)} runs, on the "
              f"wall clock in {wall_ok} of {len(runs)} (wall time depends on how much of a CPU "
              "the other workloads left). Ratios: `docs/guest-memory.md`."]
    return "\n".join(lines)


#: What the figures describe: a change here makes the docs blocks say "code since changed".
CODE = ["engine/silesia", "benchmarks/bench_standin.py"]
SCRIPT = "benchmarks/bench_standin.py --update-docs"


def update_docs(runs: list[dict], res: dict | None) -> None:
    """Write the stamped blocks (``qatmig_engine.docstamp``) this script owns."""
    from qatmig_engine.docstamp import write_block

    stamps = [r.get("stamp") for r in runs]
    if not all(stamps) or len({st["code_sha"] for st in stamps}) != 1:
        raise SystemExit("--update-docs: every run must carry the stamp of the same measured "
                         "code (runs from --json of an older version have none): re-measure")
    if res is not None:
        write_block(ROOT / "docs" / "guest-memory.md", "standin-ratios", ratio_markdown(res),
                    script=SCRIPT, code=CODE, root=ROOT, stamped=res["stamp"])
    write_block(ROOT / "docs" / "performance.md", "standin-speed", perf_markdown(runs),
                script=SCRIPT, code=CODE, root=ROOT, stamped=stamps[0],
                heading="## Silesia stand-in generation (`benchmarks/bench_standin.py`)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", help="only the first SIZE bytes of each file (e.g. 2M)")
    ap.add_argument("--reps", type=int, default=3, help="generation repetitions (median)")
    ap.add_argument("--calibrate", action="store_true", help="fit KNOBS and print them")
    ap.add_argument("--sample", default="3M", help="calibration sample per file")
    ap.add_argument("--files", nargs="*", default=[f.name for f in SILESIA_FILES])
    ap.add_argument("--update-docs", action="store_true",
                    help="write the ratio table into docs/guest-memory.md and the speed table "
                    "into docs/performance.md, stamped with the commit measured")
    ap.add_argument("--pin", action="store_true", help="write the sha256 pin manifest")
    ap.add_argument("--speed-only", action="store_true", help="skip the ratio table")
    ap.add_argument("--from-json", metavar="FILE", nargs="+",
                    help="render from earlier --json runs (speed: one row each; ratios: the "
                    "last) instead of measuring")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.pin:
        out = ROOT / "fixtures" / "silesia" / "manifest.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(pin(), indent=2) + "\n")
        print(f"wrote {out}")
        return 0
    if args.calibrate:
        knobs = calibrate(args.files, parse_size(args.sample))
        print(json.dumps(knobs, indent=4))
        return 0
    if args.from_json:
        runs = [json.loads(Path(f).read_text()) for f in args.from_json]
    else:
        runs = [measure(parse_size(args.limit) if args.limit else None, args.reps,
                        not args.speed_only)]
    with_ratios = [r for r in runs if "files" in r]
    res = with_ratios[-1] if with_ratios else None
    if args.json:
        print(json.dumps(runs[-1], indent=2))
    else:
        print(perf_markdown(runs))
        if res is not None:
            print()
            print(ratio_markdown(res))
    if args.update_docs:
        update_docs(runs, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
