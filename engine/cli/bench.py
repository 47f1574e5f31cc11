"""``qatmig bench``: the seed's benchmark table for the engine and real QEMUs, with plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ._common import add_json_flag, format_table, print_json, progress, size_arg

EPILOG = """\
examples:
  qatmig bench                 # 1 GiB Silesia guest, 2 channels, none/zlib/zstd
  qatmig bench --channels 2,4,8 --max-bandwidth unlimited,1Gbit,10Gbit --repeat 3
  qatmig bench --impl engine,qemu:/usr/bin/qemu-system-x86_64,qemu:$HOME/qemu10/qemu-10.0
  qatmig bench --guest mixed --guest-size 256M --multifd-compression zstd --json
  qatmig bench --channels 1,2,4,8 --count-wire --predict-host 8,10Gbit,16   # scaling model

Implementations (--impl): 'engine' (two processes running api.send/api.listen; next to QEMUs it
becomes one engine per dialect those QEMUs speak), 'engine@qemu-7.2' (a fixed dialect), and
'qemu:PATH' (a qemu-system-x86_64, or a ready-to-run wrapper; 'qemu' alone = the one on PATH).
Both ends of every migration run the same implementation, on the same guest image, in one run.

Output folder (--output, default ./bench-results): results.json, results.csv, tables.md and
tables.txt (the seed layout per implementation, with engine ÷ QEMU ratio columns), and one PNG
per link (matplotlib: pip install 'pytest-qatmig[bench]'). --max-bandwidth is QEMU's
max-bandwidth in bytes/s (512M, 1.25G) or a link in bits (1Gbit, 10Gbit), or 'unlimited'.

The machine's load average before and after, and the spread of the repeats, are recorded:
on a shared machine read the ratios, not the absolute times.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="the seed's benchmark matrix (engine vs real QEMU), tables + CSV + JSON + plots",
        description="Run the QATzip document's benchmark matrix (methods x channels x links) "
        "for the engine and real QEMUs on one guest image, in one run, and write the seed's "
        "table per implementation with ratio columns, CSV, JSON and PNG plots.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--channels", default="2", metavar="LIST",
                   help="multifd-channels values, e.g. 2,4,8 (default 2)")
    p.add_argument("--multifd-compression", default="none,zlib,zstd", metavar="LIST",
                   help="methods, e.g. none,zstd,zlib,qatzip (default none,zlib,zstd)")
    p.add_argument("--max-bandwidth", default="unlimited", metavar="LIST",
                   help="links: unlimited, bytes/s (1.25G) or bits (1Gbit,10Gbit) "
                   "(default unlimited)")
    p.add_argument("--impl", default=None, metavar="LIST",
                   help="engine, engine@DIALECT, qemu:PATH (default: engine, the QEMU on PATH "
                   "and QEMU 10.0 when `python -m qatmig_engine.qemu.fetch` fetched it)")
    p.add_argument("--guest-size", type=size_arg, default=1 << 30, metavar="SIZE",
                   help="guest RAM, whole MiB (default 1G)")
    p.add_argument("--guest", default="silesia", metavar="KIND",
                   help="silesia (real corpus when present, else the stand-in; default), "
                   "mixed (the interop tests' mixed pages) or an image FILE")
    p.add_argument("--zero-ratio", type=float, default=0.0, metavar="R",
                   help="share of zero pages in the Silesia guest (default 0)")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell, median (default 1)")
    p.add_argument("--count-wire", action="store_true",
                   help="one more run per cell through a counting tap: bytes on the wire")
    p.add_argument("--timeout", type=float, default=600.0, help="per migration, seconds")
    p.add_argument("-o", "--output", type=Path, default=Path("bench-results"), metavar="DIR",
                   help="output folder (default ./bench-results)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="do not measure: render a previous results.json (tables, CSV, plots)")
    p.add_argument("--update-docs", action="store_true",
                   help="(source checkout) write the tables into docs/performance.md as a "
                   "stamped figures block and the plots into docs/perf/")
    p.add_argument("--docs-id", default="bench", metavar="ID",
                   help="the figures block --update-docs writes (default bench)")
    p.add_argument("--predict-host", default=None, metavar="CHANNELS,LINK,CORES",
                   help="with two or more --channels values: predict this host from the "
                        "scaling fit, e.g. 8,10Gbit,16 (default: the seed's host, 8 channels, "
                        "10 Gbit/s, 16 cores, beside its published figures); add --count-wire "
                        "so the link's limit uses the measured compression ratio")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_json_flag(p)
    p.set_defaults(func=run)


def _ints(text: str, what: str) -> list[int]:
    from ..bench import split_list

    try:
        return [int(x) for x in split_list(text)]
    except ValueError:
        raise ParameterError(f"{what} {text!r}: expected a comma-separated list of integers")\
            from None


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces these figures (for the docs stamp)."""
    import shlex

    parts = ["qatmig", "bench", "--guest", args.guest, "--guest-size",
             f"{args.guest_size >> 20}M", "--channels", args.channels,
             "--multifd-compression", args.multifd_compression,
             "--max-bandwidth", args.max_bandwidth, "--repeat", str(args.repeat)]
    if args.impl:
        parts += ["--impl", args.impl]
    if args.zero_ratio:
        parts += ["--zero-ratio", str(args.zero_ratio)]
    if args.count_wire:
        parts.append("--count-wire")
    if args.predict_host:
        parts += ["--predict-host", args.predict_host]
    if args.docs_id != "bench":
        parts += ["--docs-id", args.docs_id]
    return " ".join(shlex.quote(p) for p in parts) + " --update-docs"


def _qemus() -> list[str]:
    """The QEMUs a default matrix compares with: the system's (7.2 on Debian 12) and QEMU 10.0
    when ``python -m qatmig_engine.qemu.fetch`` has fetched it (never fetched here)."""
    from ..qemu.fetch import find_qemu10
    from ..qemu.process import find_qemu

    out = [q] if (q := find_qemu()) else []
    q10 = find_qemu10()
    if q10 is not None:
        out.append(str(q10.wrapper))
    return out


def run(args: argparse.Namespace) -> int:
    import json

    from .. import bench

    if args.from_json is not None:
        try:
            result = json.loads(args.from_json.read_text())
        except (OSError, ValueError) as exc:
            raise ParameterError(f"--from-json {args.from_json}: {exc}") from None
        return _report(args, result)
    specs = bench.split_list(args.impl) if args.impl else bench.default_impls(_qemus())
    if args.guest_size <= 0 or args.guest_size % (1 << 20):
        raise ParameterError(f"--guest-size {args.guest_size}: must be a whole number of MiB")
    matrix = bench.Matrix(
        impls=bench.resolve_impls(specs),
        methods=bench.split_list(args.multifd_compression),
        channels=_ints(args.channels, "--channels"),
        bandwidths=[bench.parse_bandwidth(b) for b in bench.split_list(args.max_bandwidth)],
        size=args.guest_size, guest=args.guest, zero_ratio=args.zero_ratio,
        repeat=args.repeat, count_wire=args.count_wire, timeout=args.timeout,
    )
    matrix.validate()
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ParameterError("plots need matplotlib: pip install 'pytest-qatmig[bench]' "
                                 "(or pass --no-plots)") from None
    total = len(matrix.cells()) * matrix.repeat
    print(f"qatmig bench: {total} migration(s): {', '.join(i.label for i in matrix.impls)}; "
          f"{', '.join(matrix.methods)}; channels {args.channels}; "
          f"{args.guest_size >> 20} MiB {args.guest} guest", file=sys.stderr)
    with progress(total, "bench", quiet=args.quiet, unit="run") as bar:
        def on_run(what: str) -> None:
            bar.set_postfix_str(what, refresh=False)
            bar.update(1)

        # Without a terminal (a log file, CI) one line per migration instead of the bar.
        log = None if (args.quiet or sys.stderr.isatty()) else \
            (lambda line: print(line, file=sys.stderr, flush=True))
        result = bench.run_matrix(matrix, on_run=on_run, log=log)
    result["meta"]["command"] = _command_line(args)
    return _report(args, result)


def _report(args: argparse.Namespace, result: dict[str, Any]) -> int:
    from dataclasses import asdict

    from .. import bench

    if args.predict_host is not None:
        result["meta"]["predict_host"] = asdict(bench.parse_host(args.predict_host))
    written = bench.write_outputs(result, args.output, plots=not args.no_plots)
    if args.json:
        print_json(result)
    else:
        la0, la1 = result["meta"]["loadavg_before"], result["meta"]["loadavg_after"]
        for title, tab in bench.tables(result, format_table):
            print(f"{title}\n{tab}\n")
        scaling = bench.scaling_markdown(result)
        if scaling:
            print(f"{scaling}\n\n{bench.prediction_markdown(result)}\n")
        print(f"{result['meta']['guest']['description']}; median of {result['meta']['repeat']}; "
              f"load average {la0[0]:.2f} -> {la1[0]:.2f} (shared machine: read the ratios)")
    print(f"wrote {', '.join(str(w) for w in written)}", file=sys.stderr)
    if args.update_docs:
        plots = [w for w in written if w.suffix == ".png"]
        command = result["meta"].get("command") or "qatmig bench --update-docs"
        doc = bench.update_docs(result, plots, command, block_id=args.docs_id)
        print(f"updated {doc}", file=sys.stderr)
    return 0
