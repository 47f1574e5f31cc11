"""``qatmig migrate`` (both ends over loopback), ``qatmig listen`` and ``qatmig send``."""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from typing import Any

from ..dialects import DEFAULT_DIALECT, DIALECTS
from ..errors import ParameterError
from ..params import MigrationParameters
from ..stats import MigrationStats
from ._common import (
    add_json_flag,
    format_table,
    print_json,
    progress,
    size_arg,
    timeout_arg,
)

EPILOG_MIGRATE = """\
examples:
  qatmig migrate --guest-size 256M --multifd-channels 2 --multifd-compression zstd
  qatmig migrate --guest-size 1G --multifd-compression zlib --multifd-zlib-level 1 --json
  qatmig migrate --guest-size 256M --dirty-rate 20000 --downtime-limit 100   # live guest
  qatmig migrate --guest-size 256M --max-bandwidth 40M                     # 40 MiB/s cap
  qatmig migrate --multifd-compression qatzip --qat-backend auto --json

Source and destination run in this process over 127.0.0.1; "verified" means the destination's
RAM equals the source's byte for byte. Exit status 0 only when the migration completed and
verified. Parameter names are QEMU's (migrate-set-parameters).
"""

EPILOG_LISTEN = """\
examples:
  qatmig listen --listen 127.0.0.1:4444 --guest-image /dev/shm/dst.img --guest-size 1G
  qatmig listen --listen 127.0.0.1:4444 --guest-image dst.img --guest-size 256M \\
      --ramblock pc.ram --dialect qemu-7.2 --multifd-compression zstd   # a QEMU 7.2 source
  qatmig listen --listen 127.0.0.1:4444 --guest-image dst.img --guest-size 256M \
      --tls-creds creds --tls-authz 'C=GB,O=qatmig test,CN=qatmig source'   # TLS (tls-certs)

Serves one incoming migration and exits: 0 when it completed, 1 when it failed. The RAM of the
block named by --ramblock lives in --guest-image (created as a sparse file of zeros), so it can
be compared with the source's, each --add-ramblock block in its file; any other block the source
lists (ROMs of a real QEMU) lives in anonymous memory.
Both sides need the same --multifd-channels, --multifd-compression, --dialect and --uuid.
"""

EPILOG_SEND = """\
examples:
  qatmig send 127.0.0.1:4444 --guest-image /dev/shm/src.img
  qatmig send 127.0.0.1:4444 --guest-image src.img --dialect qemu-7.2 --multifd-compression zstd
  qatmig send 127.0.0.1:4444 --guest-image src.img --tls-creds creds --tls-hostname localhost
  qatmig send 127.0.0.1:4444 --guest-image ram.img --add-ramblock pc.bios=bios.img \
      --add-ramblock 0000:00:02.0/vga.vram=vram.img          # several RAM blocks, in order

Migrates the guest image (never modified: mapped read-only, or copy-on-write with
--dirty-rate) to a destination started with `qatmig listen` or a QEMU with -incoming. The
image is the first RAM block (--ramblock); --add-ramblock lists further ones, as a QEMU
source lists pc.bios, pc.rom and its VGA memory after pc.ram.
"""


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got '{text}'")


def _add_params(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("migration parameters (QEMU's names and defaults)")
    g.add_argument("--multifd-channels", type=int, default=2, metavar="N",
                   help="multifd channels, 1..255 (default 2)")
    g.add_argument("--multifd-compression", default="none",
                   choices=("none", "zlib", "zstd", "qatzip", "qpl", "uadk"),
                   help="compression method (default none)")
    g.add_argument("--multifd-zlib-level", type=int, default=1, metavar="L", help="0..9 (1)")
    g.add_argument("--multifd-zstd-level", type=int, default=1, metavar="L", help="0..20 (1)")
    g.add_argument("--multifd-qatzip-level", type=int, default=1, metavar="L", help="1..9 (1)")
    g.add_argument("--max-bandwidth", type=size_arg, default=0, metavar="BYTES",
                   help="bytes/s on the wire, all channels, headers included; suffixes K/M/G "
                   "are binary; 0 = unlimited (default 0; QEMU's default is 128M)")
    g.add_argument("--downtime-limit", type=int, default=300, metavar="MS",
                   help="switch over once the rest fits in this many ms (default 300)")
    g.add_argument("--zero-page-detection", choices=("none", "legacy", "multifd"),
                   help="default: the dialect's (legacy for qemu-7.2, multifd for 9.x)")
    g.add_argument("--dialect", default=DEFAULT_DIALECT, choices=tuple(DIALECTS),
                   help=f"which QEMU release's wire to speak (default {DEFAULT_DIALECT})")
    g.add_argument("--qat-backend", default="auto", choices=("auto", "hw", "sw"),
                   help="qatzip only: hardware when a ready device exists (auto)")
    g.add_argument("--qat-fallback", type=_on_off, default=True, metavar="on|off",
                   help="qatzip only: fall back to software when QAT is unusable (on)")
    g.add_argument("--qat-sw-engine", choices=("zlib", "isal"), default=None,
                   help="qatzip software producer: zlib (byte-exact with libqatzip's software "
                   "path, default) or isal (ISA-L: same gzip-ext format, faster, other bytes)")
    g.add_argument("--qat-sysfs-root", metavar="DIR", default=None,
                   help="discover QAT devices under DIR instead of /sys (e.g. a fake tree "
                   "from `qatmig devices --fake-host`)")
    g.add_argument("--qat-library", metavar="PATH", default=None,
                   help="libqatzip to load (default: libqatzip.so.3 or $QATMIG_LIBQATZIP)")
    g.add_argument("--qat-inject-fault", metavar="SPEC", default=None,
                   help="testing: make the hardware engine fail, e.g. "
                   "'after_packets=3,channel=1,rc=QZ_FAIL' (see docs/qat.md)")
    g.add_argument("--return-path", type=_on_off, default=False, metavar="on|off",
                   help="QEMU's return-path capability (source): the destination confirms "
                   "(MIG_RP_MSG_SHUT) that it loaded everything before the source reports "
                   "completed (default off, as QEMU)")
    t = p.add_argument_group(
        "TLS (QEMU's tls-creds, tls-hostname, tls-authz)",
        "QEMU names a tls-creds-x509 object; a command line has no -object, so\n"
        "--tls-creds takes the directory that object's dir= would load: ca-cert.pem, plus\n"
        "server-cert.pem and server-key.pem on a destination (listen), client-cert.pem and\n"
        "client-key.pem on a source (send); `qatmig tls-certs DIR` makes test ones. The peer\n"
        "is always verified (QEMU's verify-peer=on). Every channel, main and multifd, does\n"
        "its own TLS handshake.")
    t.add_argument("--tls-creds", metavar="DIR", default=None,
                   help="TLS on every channel with the x509 credentials in DIR (default off)")
    t.add_argument("--tls-hostname", metavar="NAME", default=None,
                   help="source: the name the destination's certificate must carry (default the "
                   "HOST it connects to)")
    t.add_argument("--tls-authz", metavar="DN", action="append", default=None,
                   help="destination: admit only a source whose client certificate has this "
                   "distinguished name, written as QEMU (gnutls) prints it: certificate order, "
                   "e.g. 'C=GB,O=Example,CN=source' (`openssl x509 -noout -subject -nameopt "
                   "RFC2253,-dn_rev -in client-cert.pem` shows it); repeat for more (QEMU's "
                   "authz-list, exact match)")
    g.add_argument("--uuid", default=None,
                   help="VM uuid carried in every channel's init packet (default all zeros, as "
                   "QEMU without -uuid); both sides must agree")
    g.add_argument("--timeout", type=timeout_arg, default=30.0, metavar="S",
                   help="fail when no byte moves on any channel for S seconds (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_flag(p)


def _params(args: argparse.Namespace) -> MigrationParameters:
    return MigrationParameters(
        multifd_channels=args.multifd_channels,
        multifd_compression=args.multifd_compression,
        multifd_zlib_level=args.multifd_zlib_level,
        multifd_zstd_level=args.multifd_zstd_level,
        multifd_qatzip_level=args.multifd_qatzip_level,
        zero_page_detection=args.zero_page_detection,
        max_bandwidth=args.max_bandwidth,
        downtime_limit=args.downtime_limit,
        dialect=args.dialect,
        qat_backend=args.qat_backend,
        qat_fallback=args.qat_fallback,
        return_path=args.return_path,
        tls_creds=args.tls_creds,
        tls_hostname=args.tls_hostname,
        tls_authz=tuple(args.tls_authz) if args.tls_authz else None,
        extra={
            key: value
            for key, value in (
                ("qat_sw_engine", getattr(args, "qat_sw_engine", None)),
                ("qat_sysfs_root", getattr(args, "qat_sysfs_root", None)),
                ("qat_library", getattr(args, "qat_library", None)),
                ("qat_fault_injection", getattr(args, "qat_inject_fault", None)),
            )
            if value is not None
        },
    )


class _LazyProgress:
    """A progress bar that appears only once a run has lasted more than a second."""

    def __init__(self, total: int | None, desc: str, quiet: bool) -> None:
        self.total = total
        self.desc = desc
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.pending = 0
        self.bar: Any = None
        self.lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self.quiet:
            return
        with self.lock:
            if self.bar is None:
                self.pending += n
                if time.monotonic() - self.t0 < 1.0:
                    return
                self.bar = progress(self.total, self.desc, quiet=self.quiet)
                n, self.pending = self.pending, 0
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report(st: MigrationStats, args: argparse.Namespace) -> int:
    if args.json:
        print_json(st.to_json())
    elif st.status == "completed":
        # A failed run's figures are noise next to its one error line (below, on stderr).
        print(format_table(MigrationStats.TABLE_HEADERS, [st.table_row()]))
        print(MigrationStats.TABLE_LEGEND)
        print(st.summary())
        if st.verified is None:
            for end, digest in (("sent", st.source_digest), ("received", st.destination_digest)):
                if digest:
                    print(f"sha256 of the {end} RAM: {digest}")
        if st.qat_backend:
            print(f"qatzip backend: {st.qat_backend}")
            for reason in st.qat_fallback_reasons or ():
                print(f"  fallback to software: {reason}")
            for ev in st.qat_fallback_events or ():
                print(
                    f"  channel {ev.get('channel')} switched to software at its packet "
                    f"{ev.get('packet_num')}: {ev.get('reason')}"
                )
    if st.converged is False:
        print(
            f"qatmig: warning: did not converge within {st.rounds - 1} rounds (dirty rate "
            f"{st.dirty_pages_rate:.0f} pages/s; expected downtime "
            f"{st.expected_downtime_ms or 0:.0f} ms > downtime-limit {st.downtime_limit_ms} ms);"
            " the guest was stopped anyway: raise --downtime-limit or lower --dirty-rate",
            file=sys.stderr,
        )
    if st.status != "completed":
        print(f"qatmig: error: migration failed: {st.error}", file=sys.stderr)
        return 1
    if st.verified is False:
        print("qatmig: error: destination RAM differs from the source", file=sys.stderr)
        return 1
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ..api import migrate_loopback

    params = _params(args)
    size = args.guest_size
    if args.guest_image is None and size is None:
        size = 256 << 20
    bar = _LazyProgress(size, "migrate", args.quiet)
    try:
        st = migrate_loopback(
            size, params, guest_image=args.guest_image, dirty_rate=args.dirty_rate,
            dirty_pattern=args.dirty_pattern, timeout=args.timeout, progress=bar,
            uuid=args.uuid, max_iters=args.max_iters, corpus=args.corpus, ramblock=args.ramblock,
            destination_image=args.destination_image,
            destination_prealloc=args.destination_prealloc,
        )
    finally:
        bar.close()
    return _report(st, args)


def _connect_wait(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def _hostport(text: str) -> tuple[str, int]:
    from ..transport import parse_hostport

    try:
        return parse_hostport(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_listen(args: argparse.Namespace) -> int:
    from ..api import listen

    host, port = args.listen
    if args.guest_size is None:
        raise ParameterError("listen needs --guest-size (the size of the --ramblock block)")
    bar = _LazyProgress(args.guest_size, "receive", args.quiet)

    def ready(addr: tuple[str, int]) -> None:
        # Always (stderr, even with --json/--quiet): with port 0 it is how a caller learns it.
        print(f"qatmig: listening on {addr[0]}:{addr[1]}", file=sys.stderr, flush=True)

    try:
        st = listen(host, port, args.guest_image, args.guest_size, _params(args),
                    ramblock=args.ramblock, uuid=args.uuid, timeout=args.timeout,
                    progress=bar, on_ready=ready, prealloc=args.prealloc,
                    digest=not args.no_digest, extra_ramblocks=args.add_ramblock)
    finally:
        bar.close()
    return _report(st, args)


def _cmd_send(args: argparse.Namespace) -> int:
    from ..api import send

    host, port = args.target
    if args.guest_image is None and args.guest_size is None:
        raise ParameterError("give --guest-image FILE (or --guest-size for the default guest)")
    bar = _LazyProgress(args.guest_size, "send", args.quiet)
    try:
        st = send(host, port, args.guest_image, _params(args), guest_size=args.guest_size,
                  ramblock=args.ramblock, uuid=args.uuid, dirty_rate=args.dirty_rate,
                  dirty_pattern=args.dirty_pattern, timeout=args.timeout, progress=bar,
                  machine_type=args.machine_type, max_iters=args.max_iters,
                  digest=not args.no_digest, connect_wait=args.connect_wait,
                  final_image=args.final_image, extra_ramblocks=args.add_ramblock)
    finally:
        bar.close()
    return _report(st, args)


def _ramblock_file(text: str) -> tuple[str, str]:
    from ..guest import parse_ramblock_file

    try:
        return parse_ramblock_file(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--add-ramblock {text!r}: ")
                                         ) from None


def _add_guest(p: argparse.ArgumentParser, *, dirty: bool = True,
               add_blocks: str | None = None) -> None:
    g = p.add_argument_group("guest")
    g.add_argument("--guest-size", type=size_arg, default=None, metavar="SIZE",
                   help="guest RAM size, e.g. 256M, 1G")
    g.add_argument("--guest-image", default=None, metavar="FILE",
                   help="file holding guest RAM (e.g. in /dev/shm)")
    g.add_argument("--ramblock", default="pc.ram", metavar="NAME",
                   help="RAM block name of that RAM (default pc.ram, QEMU's with plain -m)")
    if add_blocks:
        g.add_argument("--add-ramblock", type=_ramblock_file, action="append", default=[],
                       metavar="NAME=FILE", help=add_blocks)
    if dirty:
        g.add_argument("--dirty-rate", type=int, default=0, metavar="PAGES/S",
                       help="pages/s a workload dirties during the migration (default 0)")
        g.add_argument("--dirty-pattern", default="random", choices=("random", "sequential"))
        g.add_argument("--max-iters", type=int, default=30, metavar="N",
                       help="rounds before a forced switchover (reported as not converged)")


def register(subparsers: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "migrate", help="migrate a guest over loopback (source + destination) and report",
        description="Run a multifd live migration of a guest over 127.0.0.1 and print one "
        "seed-style table row (or --json).", epilog=EPILOG_MIGRATE, formatter_class=fmt)
    _add_guest(p)
    p.add_argument("--destination-image", default=None, metavar="FILE",
                   help="keep the destination's RAM in FILE (default anonymous memory)")
    p.add_argument("--destination-prealloc", action="store_true",
                   help="fault the destination's RAM in before migrating (QEMU's prealloc=on)")
    p.add_argument("--corpus", default="auto",
                   help="content of the default guest: auto (default: the real Silesia corpus "
                   "when $QATMIG_SILESIA or the cache has it, else the stand-in), stand-in "
                   "(Silesia-like, cached image), silesia, a directory, or filler (quick, tests)")
    _add_params(p)
    p.set_defaults(func=_cmd_migrate)

    p = subparsers.add_parser(
        "listen", help="serve one incoming migration (destination)",
        description="Destination: accept one migration, put the RAM in --guest-image.",
        epilog=EPILOG_LISTEN, formatter_class=fmt)
    p.add_argument("--listen", required=True, type=_hostport, metavar="HOST:PORT",
                   help="address to listen on (port 0 = any free port)")
    _add_guest(p, dirty=False, add_blocks=(
        "another RAM block after --ramblock, its RAM in FILE: an existing file of the block's "
        "size whose bytes are kept until pages arrive (e.g. pc.bios=bios.img after `truncate "
        "-s 256K bios.img`); repeat for more, in the source's order"))
    p.add_argument("--prealloc", action="store_true",
                   help="fault the RAM in before listening (QEMU's prealloc=on)")
    p.add_argument("--no-digest", action="store_true",
                   help="skip the sha256 of the received RAM (saves ~2 CPU-s per GiB; the "
                   "JSON's destination_digest is then null)")
    _add_params(p)
    p.set_defaults(func=_cmd_listen)

    p = subparsers.add_parser(
        "send", help="migrate a guest image to a listening destination (source)",
        description="Source: migrate --guest-image to HOST:PORT.", epilog=EPILOG_SEND,
        formatter_class=fmt)
    p.add_argument("target", type=_hostport, metavar="HOST:PORT")
    _add_guest(p, add_blocks=(
        "another RAM block after --ramblock, named NAME, its RAM the whole of FILE (never "
        "modified; --dirty-rate dirties the first block only); repeat for more, sent in this "
        "order, e.g. --add-ramblock pc.bios=bios.img --add-ramblock pc.rom=rom.img"))
    p.add_argument("--final-image", default=None, metavar="FILE",
                   help="once the migration ended, write the guest's RAM as it was when the "
                   "guest stopped (the --dirty-rate workload's writes included) to FILE: what "
                   "the destination must hold; --guest-image itself is never modified")
    p.add_argument("--machine-type", default=None,
                   help="machine type in the CONFIGURATION section (the destination's "
                   "exact -machine type name for a real QEMU destination; default the "
                   "dialect's pc, e.g. pc-i440fx-10.0 for qemu-10.0)")
    p.add_argument("--no-digest", action="store_true",
                   help="skip the sha256 of the sent RAM (saves ~2 CPU-s per GiB)")
    p.add_argument("--connect-wait", type=_connect_wait, default=0.0, metavar="S",
                   help="keep retrying for up to S seconds while HOST:PORT refuses connections "
                   "(a destination still starting, e.g. `qatmig listen ... &` just before); "
                   "default 0: fail at once, as QEMU does")
    _add_params(p)
    p.set_defaults(func=_cmd_send)
