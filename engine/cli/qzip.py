"""``qatmig qzip``: files to and from QATzip's gzip-ext format, in the spirit of QATzip's qzip.

Compression is libqatzip's software path (one gzip-ext member per block of input, see
:mod:`qatmig_engine.codecs.qzformat`); the output is ordinary multi-member gzip, so ``gzip -d``
reads it. Decompression accepts every layout libqatzip emits and plain gzip. Output goes to a
temporary file next to the target and is renamed into place only when complete, so a failure
never leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from ..codecs import qzformat
from ..errors import CodecError, ParameterError, QatmigError
from ._common import format_table, print_json, progress

#: Input bytes per gzip-ext member when compressing a file (one ``qzCompress(last=1)`` each).
BLOCK_SIZE = 16 << 20
READ_SIZE = 1 << 20
SUFFIX = ".gz"

EPILOG = """\
examples:
  qatmig qzip guest.ram                 # -> guest.ram.gz (gzip-ext, level 1), removes guest.ram
  qatmig qzip -k -L 9 guest.ram         # keep the input, level 9
  qatmig qzip -d guest.ram.gz           # -> guest.ram
  qatmig qzip -d -o out.bin payload.gz  # choose the output name (keeps payload.gz)
  cat data | qatmig qzip > data.gz      # stdin -> stdout
  qatmig qzip -d -c data.gz | sha256sum
  qatmig qzip -k --json a b c           # per-file sizes as JSON

Output is gzip-ext as libqatzip's software path writes it (1f 8b 08 04, 'QZ' extra field with
the member's sizes, full flush every 64 KiB); any gzip reader (gzip -d, zcat) decodes it.
Decompression also reads QAT hardware output (one member per 64 KiB) and plain gzip files.
Exit status: 0 ok, 1 if any file failed (corrupt input, missing file, existing output).
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "qzip",
        help="compress/decompress files in QATzip gzip-ext format (like QATzip's qzip)",
        description="Compress or decompress files in QATzip's gzip-ext format "
        "(software path, byte-exact with libqatzip 1.3.1 on zlib 1.2.13).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="files to process; none or '-' = stdin to stdout")
    p.add_argument("-d", "--decompress", action="store_true", help="decompress")
    p.add_argument("-L", "--level", type=int, default=1, metavar="LEVEL",
                   help="compression level 1..9 (default 1, QEMU's multifd-qatzip-level default)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file (one input only; '-' = stdout); the input is kept")
    p.add_argument("-k", "--keep", action="store_true", help="keep the input file")
    p.add_argument("-c", "--stdout", action="store_true",
                   help="write to stdout, keep input files")
    p.add_argument("-f", "--force", action="store_true",
                   help="overwrite existing output files; write compressed data to a terminal")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with per-file sizes (not with stdout output)")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- streaming cores
def _compress_stream(src: BinaryIO, level: int, tick: Callable[[int], Any]) -> Iterator[bytes]:
    first = True
    while True:
        block = _read_block(src, BLOCK_SIZE)
        if not block:
            if first:  # an empty input is still one member (34 bytes), as qzip writes it
                yield qzformat.compress(b"", level)
            return
        first = False
        tick(len(block))
        yield qzformat.compress(block, level)
        if len(block) < BLOCK_SIZE:
            return


def _read_block(src: BinaryIO, size: int) -> bytes:
    parts = []
    got = 0
    while got < size:
        chunk = src.read(min(READ_SIZE, size - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _decompress_stream(src: BinaryIO, tick: Callable[[int], Any],
                       dec: qzformat.GzipExtDecoder) -> Iterator[bytes]:
    while True:
        chunk = src.read(READ_SIZE)
        if not chunk:
            break
        tick(len(chunk))
        yield from dec.feed(chunk)
    dec.finish()


# --------------------------------------------------------------------------- per file
def _output_name(path: str, decompress: bool) -> str:
    if not decompress:
        if path.endswith(SUFFIX):
            raise ParameterError(f"{path} already has the {SUFFIX} suffix -- unchanged "
                                 f"(use -o OUT to compress it again)")
        return path + SUFFIX
    if not path.endswith(SUFFIX) or len(path) == len(SUFFIX):
        raise ParameterError(f"{path}: unknown suffix -- ignored (expected {SUFFIX}; "
                             f"use -o OUT to choose the output name)")
    return path[: -len(SUFFIX)]


def _process(src: BinaryIO, dst: BinaryIO, args: argparse.Namespace, total: int | None,
             label: str) -> tuple[int, int, int]:
    """Copy src -> dst through the codec; returns (bytes in, bytes out, members)."""
    n_in = n_out = members = 0
    dec = qzformat.GzipExtDecoder()
    with progress(total, label, quiet=args.quiet) as bar:

        def tick(n: int) -> None:
            nonlocal n_in
            n_in += n
            bar.update(n)

        gen = (_decompress_stream(src, tick, dec) if args.decompress
               else _compress_stream(src, args.level, tick))
        for piece in gen:
            dst.write(piece)
            n_out += len(piece)
            members += 1
    if args.decompress:
        members = dec.members
    return n_in, n_out, members


def _do_file(path: str, args: argparse.Namespace) -> dict[str, Any]:
    to_stdout = args.stdout or args.output == "-"
    if path == "-":
        src_ctx: BinaryIO = sys.stdin.buffer
        total = None
    else:
        if os.path.isdir(path):
            raise ParameterError(f"{path} is a directory -- ignored")
        src_ctx = open(path, "rb")
        total = os.fstat(src_ctx.fileno()).st_size
    try:
        if to_stdout or (path == "-" and not args.output):
            out = sys.stdout.buffer
            if not args.decompress and not args.force and out.isatty():
                raise ParameterError("compressed data not written to a terminal "
                                     "(redirect stdout, or use -f to force)")
            n_in, n_out, members = _process(src_ctx, out, args, total, path)
            out.flush()
            return _report(path, "-", n_in, n_out, members, args)
        target = args.output or _output_name(path, args.decompress)
        if os.path.exists(target) and not args.force:
            raise ParameterError(f"{target} already exists (use -f to overwrite)")
        tdir = os.path.dirname(os.path.abspath(target))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part",
                                   dir=tdir)
        try:
            with os.fdopen(fd, "wb") as dst:
                n_in, n_out, members = _process(src_ctx, dst, args, total, path)
                dst.flush()
                os.fsync(dst.fileno())
            if path != "-":
                _copy_mode(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    finally:
        if src_ctx is not sys.stdin.buffer:
            src_ctx.close()
    if path != "-" and not args.keep and not args.output:  # -o implies -k
        os.unlink(path)
    return _report(path, target, n_in, n_out, members, args)


def _copy_mode(src: str, dst: str) -> None:
    try:
        os.chmod(dst, os.stat(src).st_mode & 0o7777)
    except OSError:
        pass


def _report(path: str, target: str, n_in: int, n_out: int, members: int,
            args: argparse.Namespace) -> dict[str, Any]:
    comp, raw = (n_in, n_out) if args.decompress else (n_out, n_in)
    return {
        "input": path,
        "output": target,
        "action": "decompress" if args.decompress else "compress",
        "level": None if args.decompress else args.level,
        "input_bytes": n_in,
        "output_bytes": n_out,
        "members": members,
        "ratio": round(raw / comp, 3) if comp else None,
    }


def run(args: argparse.Namespace) -> int:
    lo, hi = qzformat.QZ_LEVEL_RANGE
    if not lo <= args.level <= hi:
        raise ParameterError(f"-L {args.level}: the level must be between {lo} and {hi}")
    files = args.files or ["-"]
    if args.output and len(files) > 1:
        raise ParameterError("-o OUT takes exactly one input file")
    to_stdout = args.stdout or args.output == "-" or (files == ["-"] and not args.output)
    if args.json and to_stdout:
        raise ParameterError("--json needs file output (stdout carries the data); "
                             "drop -c / use -o FILE")
    if files.count("-") > 1:
        raise ParameterError("stdin ('-') can be read only once")
    results: list[dict[str, Any]] = []
    failed = 0
    for path in files:
        try:
            results.append(_do_file(path, args))
        except (QatmigError, OSError) as exc:
            failed += 1
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = getattr(exc, "filename", None) or path
            kind = "corrupt input" if isinstance(exc, CodecError) else "error"
            print(f"qatmig qzip: {where}: {kind}: {msg}", file=sys.stderr)
    if args.json:
        print_json({"files": results, "failed": failed}, sys.stdout)
    elif results and not to_stdout and not args.quiet and len(files) > 1:
        rows = [(r["input"], r["output"], r["input_bytes"], r["output_bytes"], r["ratio"])
                for r in results]
        print(format_table(["input", "output", "in bytes", "out bytes", "ratio"], rows),
              file=sys.stderr)
    return 1 if failed else 0
