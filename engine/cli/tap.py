"""``qatmig tap``: forward a migration and check every multifd byte against the spec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qatmig_engine.cli._common import add_json_flag, print_json, timeout_arg
from qatmig_engine.dialects import DEFAULT_DIALECT, DIALECTS
from qatmig_engine.errors import ParameterError

EPILOG = """\
examples:
  # QEMU 10.0 (or qatmig send/listen, same default dialect) through the tap
  qatmig tap --listen 127.0.0.1:4445 --forward 127.0.0.1:4444
  # QEMU 7.2 -> tap -> QEMU 7.2: point the source's `migrate` at the tap
  qatmig tap --listen 127.0.0.1:4445 --forward 127.0.0.1:4444 --dialect qemu-7.2 --json
  # also compare every page with the source RAM file (guest started with -S)
  qatmig tap --listen 127.0.0.1:4445 --forward 127.0.0.1:4444 --verify-image src.img \
      --dialect qemu-7.2
  # a guest that ran during the migration: its RAM afterwards is what must arrive last
  qatmig tap --listen 127.0.0.1:4445 --forward 127.0.0.1:4444 --final-image src-after.img
  # keep the bytes (one conn-N.bin per connection, accept order), check them again offline
  qatmig tap --listen 127.0.0.1:4445 --forward 127.0.0.1:4444 --record cap/
  qatmig tap --replay cap/conn-0.bin cap/conn-1.bin cap/conn-2.bin

The tap opens one upstream connection per accepted connection, in accept order (a QEMU 7.2
destination takes the first connection as the main channel), and ends when all of them have
closed. It judges every byte against the dialect (qatmig_engine.judge; the list of checks is
in docs/wire-format.md, "The wire judge"): init packets, uuid and channel ids, packet headers
(byte order, flags vs the method, packet_num, offsets), each payload's framing and size, the
main channel's sections and syncs, and that every page arrived. QEMU 7.2 sender quirks are
printed as notes. Exit status: 0 when every byte conforms, 1 on any deviation (each names
connection, channel, packet, byte offset and field), 2 on usage errors. A stream of another
dialect is a deviation that says which dialect the bytes look like. See docs/qemu-interop.md.
"""


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:4444), got {text!r}")
    return host.strip("[]"), int(port)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "tap",
        help="validating proxy between a migration source and destination",
        description="Forward a live migration (QEMU or qatmig) and check every multifd byte "
        "against the spec; print per-channel packets, pages, bytes and compression ratio.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", type=_hostport, metavar="HOST:PORT",
                   help="where the source connects (port 0: pick one, printed on stderr)")
    p.add_argument("--forward", type=_hostport, metavar="HOST:PORT",
                   help="the destination's migrate-incoming address")
    p.add_argument("--replay", nargs="+", type=Path, metavar="FILE",
                   help="check recorded connections offline, in accept order (the main channel is "
                        "the one starting with QEVM; under qemu-7.2, the first)")
    p.add_argument("--timeout", type=timeout_arg, default=60.0, metavar="S",
                   help="give up after S seconds without a byte moving (default 60)")
    p.add_argument("--dialect", default=DEFAULT_DIALECT, choices=tuple(DIALECTS),
                   help=f"wire dialect of the peers (default {DEFAULT_DIALECT}; qemu-7.2 for "
                   "Debian 12's QEMU)")
    p.add_argument("--multifd-compression", default=None, metavar="METHOD",
                   help="expected method (default: learnt from the first data packet)")
    p.add_argument("--multifd-channels", type=int, default=None, metavar="N",
                   help="expected channel count (default: whatever connects)")
    p.add_argument("--uuid", default=None, help="expected uuid in the init packets (QEMU -uuid)")
    p.add_argument("--verify-image", type=Path, default=None, metavar="FILE",
                   help="source RAM file: every page received must equal it")
    p.add_argument("--final-image", type=Path, default=None, metavar="FILE",
                   help="source RAM file after the migration (a guest that ran): the last "
                   "copy of every page must equal it, i.e. the final dirty round arrived")
    p.add_argument("--ramblock", default="pc.ram",
                   help="RAM block --verify-image/--final-image stand for (default pc.ram)")
    p.add_argument("--level", type=int, default=None, metavar="N",
                   help="multifd-zlib/zstd/qatzip-level both ends were given (checked where "
                   "the stream shows it: zlib FLEVEL, qatzip XFL)")
    p.add_argument("--record", type=Path, default=None, metavar="DIR",
                   help="write each connection's bytes to DIR/conn-<i>.bin")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qatmig_engine.tap import TapChecker, TapProxy, format_report

    if args.replay is None and (args.listen is None or args.forward is None):
        raise ParameterError("give --listen HOST:PORT and --forward HOST:PORT "
                             "(or --replay FILE... to check a recording)")
    if args.timeout <= 0:
        raise ParameterError("--timeout must be positive")
    maps = []

    def _map(path: Path, opt: str) -> dict[str, object]:
        import mmap

        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ParameterError(f"{opt} {path}: {exc}") from None
        maps.append(mm)
        return {args.ramblock: mm}

    expect = _map(args.verify_image, "--verify-image") if args.verify_image else None
    source = _map(args.final_image, "--final-image") if args.final_image else None
    checker = TapChecker(
        dialect=args.dialect, method=args.multifd_compression,
        channels=args.multifd_channels, uuid=args.uuid, expect=expect, source=source,
        level=args.level,
    )
    if args.replay is not None:
        for i, path in enumerate(args.replay):
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        checker.feed(i, chunk)
            except OSError as exc:
                raise ParameterError(f"--replay: {exc}") from None
            checker.end(i)
        report = checker.finish()
    else:
        proxy = TapProxy(args.listen, args.forward, checker, timeout=args.timeout,
                         record_dir=args.record)
        port = proxy.bind()
        print(f"tap: listening on {args.listen[0]}:{port}, forwarding to "
              f"{args.forward[0]}:{args.forward[1]}", file=sys.stderr, flush=True)
        report = proxy.run()
    for mm in maps:
        mm.close()
    if args.json:
        print_json(report.to_json())
    else:
        print(format_report(report))
    return 0 if report.ok else 1
