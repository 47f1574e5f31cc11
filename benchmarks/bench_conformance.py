#!/usr/bin/env python3
"""How long the conformance suite takes: wall time of whole runs, with the load average.

    python benchmarks/bench_conformance.py                       # reference, -n 2, 64M guest
    python benchmarks/bench_conformance.py --impl exec:qatmig    # three directions
    python benchmarks/bench_conformance.py --impl exec:qatmig --guest-size 4M --workers 0

Each run is ``pytest --pyargs qatmig_conformance -p qatmig`` in a subprocess; the row printed
(markdown) gives the implementation, peer, guest size, workers, the outcome counts, the wall
time and the 1-minute load average before and after (other work on the machine slows it).
``--update-docs`` writes the table into docs/performance.md as a block stamped with the commit
measured (``qatmig_engine.docstamp``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What the run time depends on: a change here makes the docs block say "code since changed".
CODE = ["conformance", "pytest_qatmig", "engine", "benchmarks/bench_conformance.py"]
SCRIPT = "benchmarks/bench_conformance.py --update-docs"
COLS = ["impl", "peer", "guest", "workers", "outcome", "wall_s", "load", "exit", "slowest"]
#: Tests listed per run in the ``slowest`` column (pytest --durations).
SLOWEST = 3
_DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+\S+::(\S+)", re.M)


def markdown(rows: list[dict[str, str]], args: argparse.Namespace) -> str:
    loads = [float(x) for r in rows for x in r["load"].split(" -> ")]
    busy = max(loads) > (os.cpu_count() or 1)
    lines = [
        f"{'Whole ' if not args.pytest_args else ''}`pytest --pyargs qatmig_conformance -p qatmig"
        f"{f' -n {args.workers}' if args.workers else ''}"
        f"{''.join(' ' + a for a in args.pytest_args)}` runs ({args.guest_size} guest, "
        f"software devices, peer `{args.peer}`), on a machine with {os.cpu_count()} CPUs; the "
        "1-minute load average before -> after is in the table; `slowest`: the "
        f"{SLOWEST} longest test calls (pytest --durations, seconds)"
        + (f" (above {os.cpu_count()}: other work competed, so these are upper bounds)."
           if busy else "."),
        "",
        "| " + " | ".join(COLS) + " |",
        "|" + "---|" * len(COLS),
        *("| " + " | ".join(r[c] for c in COLS) + " |" for r in rows),
    ]
    return "\n".join(lines)


def run(impl: str, peer: str, guest_size: str, workers: int, extra: list[str]) -> dict[str, str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "qatmig", "--pyargs", "qatmig_conformance",
           f"--qatmig-impl={impl}", f"--qatmig-peer={peer}", f"--qatmig-guest-size={guest_size}",
           "--qatmig-devices=sw", "-q", "-p", "no:cacheprovider", f"--durations={SLOWEST}",
           *extra]
    if workers:
        cmd += ["-n", str(workers)]
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    cp = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    load1 = os.getloadavg()[0]
    last = cp.stdout.strip().splitlines()[-1] if cp.stdout.strip() else cp.stderr[-300:]
    counts = ", ".join(f"{n} {w}" for n, w in re.findall(r"(\d+) (passed|failed|skipped|error)",
                                                          last))
    slow = "; ".join(f"`{name}` {float(sec):.1f}" for sec, when, name
                     in _DURATION.findall(cp.stdout) if when == "call")
    return {"impl": impl, "peer": peer, "guest": guest_size, "workers": str(workers or 1),
            "outcome": counts or last, "wall_s": f"{wall:.1f}",
            "load": f"{load0:.1f} -> {load1:.1f}", "exit": str(cp.returncode),
            "slowest": slow or "-"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", action="append", help="implementation(s) (default reference)")
    ap.add_argument("--peer", default="reference")
    ap.add_argument("--guest-size", default="64M")
    ap.add_argument("--workers", type=int, default=2, help="xdist workers (0: none)")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the table into docs/performance.md, stamped with the commit "
                    "measured")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args()
    from qatmig_engine.docstamp import stamp, write_block

    stamped = stamp(CODE, ROOT)
    print("| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    rc = 0
    rows = []
    for impl in args.impl or ["reference"]:
        row = run(impl, args.peer, args.guest_size, args.workers, args.pytest_args)
        rows.append(row)
        print("| " + " | ".join(row[c] for c in COLS) + " |", flush=True)
        rc = rc or int(row["exit"])
    if args.update_docs:
        write_block(ROOT / "docs" / "performance.md", "conformance-time", markdown(rows, args),
                    script=SCRIPT, code=CODE, root=ROOT, stamped=stamped,
                    heading="## Conformance suite run time (`benchmarks/bench_conformance.py`)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
