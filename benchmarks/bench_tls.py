#!/usr/bin/env python3
"""What TLS costs the engine: the same loopback migrations with and without ``tls-creds``.

    python benchmarks/bench_tls.py                                  # 256M, none/zstd, 2/4 ch
    python benchmarks/bench_tls.py --guest-size 64M --repeat 1      # quick look
    python benchmarks/bench_tls.py --update-docs                    # into docs/performance.md

Both ends run in this process (``api.migrate_loopback``) on the cached stand-in guest; the
plain and the TLS run of a cell alternate, ``--repeat`` times, and the table gives the median
of each and the ratios TLS / plain measured in the same run (wall time of the migration, CPU
seconds of each end), with the 1-minute load average before and after (other work on this
2-core machine slows both alike, so the ratios are what to read). Certificates: a throwaway CA
made with openssl (``qatmig_engine.tlscerts``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = ["engine/tls.py", "engine/transport.py", "engine/source.py", "engine/destination.py",
        "benchmarks/bench_tls.py"]
SCRIPT = "benchmarks/bench_tls.py --update-docs"
COLS = ["method", "channels", "plain ms", "TLS ms", "time ratio", "plain send CPU s",
        "TLS send CPU s", "send CPU ratio", "plain recv CPU s", "TLS recv CPU s",
        "recv CPU ratio", "verified"]


def _size(text: str) -> int:
    from qatmig_engine.cli._common import size_arg

    return int(size_arg(text))


def measure(size: int, method: str, channels: int, creds: str | None) -> dict[str, float]:
    from qatmig_engine.api import migrate_loopback
    from qatmig_engine.params import MigrationParameters

    params = MigrationParameters(multifd_channels=channels, multifd_compression=method,
                                 tls_creds=creds)
    st = migrate_loopback(size, params, corpus="stand-in", timeout=120)
    if st.status != "completed":
        raise SystemExit(f"{method} x{channels} tls={bool(creds)}: {st.error}")
    return {"ms": st.total_time_ms, "send_cpu": st.source.cpu_seconds,
            "recv_cpu": st.destination.cpu_seconds, "verified": float(bool(st.verified))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guest-size", default="256M")
    ap.add_argument("--methods", default="none,zstd")
    ap.add_argument("--channels", default="2,4")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--update-docs", action="store_true",
                    help="write the table into docs/performance.md, stamped with the commit")
    args = ap.parse_args()
    from qatmig_engine.docstamp import stamp, write_block
    from qatmig_engine.tlscerts import make_test_creds

    stamped = stamp(CODE, ROOT)
    size = _size(args.guest_size)
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        creds = str(make_test_creds(tmp).good)
        for method in args.methods.split(","):
            for ch in (int(c) for c in args.channels.split(",")):
                runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
                for _ in range(args.repeat):
                    for tls in (False, True):
                        runs[tls].append(measure(size, method, ch, creds if tls else None))

                def med(tls: bool, key: str, runs: dict = runs) -> float:
                    return statistics.median(r[key] for r in runs[tls])

                row = {"method": method, "channels": str(ch),
                       "verified": "yes" if all(r["verified"] for v in runs.values()
                                                for r in v) else "NO"}
                for key, name, fmt in (("ms", "ms", "{:.0f}"),
                                       ("send_cpu", "send CPU s", "{:.2f}"),
                                       ("recv_cpu", "recv CPU s", "{:.2f}")):
                    plain, tls_v = med(False, key), med(True, key)
                    row[f"plain {name}"] = fmt.format(plain)
                    row[f"TLS {name}"] = fmt.format(tls_v)
                    ratio_name = "time ratio" if key == "ms" else f"{name.split()[0]} CPU ratio"
                    row[ratio_name] = f"{tls_v / plain:.2f}" if plain else "-"
                rows.append(row)
                print(" | ".join(row[c] for c in COLS), flush=True)
    load1 = os.getloadavg()[0]
    body = "\n".join([
        f"Loopback migrations of the {args.guest_size} stand-in guest, both ends in one process, "
        f"with and without `--tls-creds` (TLS 1.3, EC P-256 certificates), alternating, median "
        f"of {args.repeat}; ratios are TLS / plain from the same run. Load average "
        f"{load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| " + " | ".join(COLS) + " |",
        "|" + "---|" * len(COLS),
        *("| " + " | ".join(r[c] for c in COLS) + " |" for r in rows),
    ])
    print(body)
    if args.update_docs:
        write_block(ROOT / "docs" / "performance.md", "tls", body, script=SCRIPT, code=CODE,
                    root=ROOT, stamped=stamped,
                    heading="## TLS cost (`benchmarks/bench_tls.py`)")
    return 0 if all(r["verified"] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
