"""``qatmig verify SRC DST``: did a two-process migration deliver the source's RAM?"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import add_json_flag, print_json, size_arg

EPILOG = """\
examples:
  qatmig listen --listen 127.0.0.1:4444 --guest-image dst.img --guest-size 256M --json > dst.json &
  qatmig send 127.0.0.1:4444 --guest-image src.img --json > src.json
  qatmig verify src.img dst.img            # page by page: names the pages that differ
  qatmig verify src.json dst.json          # the digests each end printed (other hosts)
  qatmig verify src.img 3f5a...e1          # an image against a sha256 from elsewhere

Each of SRC and DST is a RAM image file, the --json report of `qatmig send` / `qatmig listen`
(source_digest / destination_digest), or a sha256 hex digest. For a real QEMU destination use
its memory-backend-file RAM file. Exit status 0 when the destination holds exactly the source's
bytes ("verified"), 1 when it does not, 2 for bad arguments.
"""


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..errors import ParameterError
    from ..verify import compare, resolve

    try:
        src = resolve(args.source, "source", args.size)
        dst = resolve(args.destination, "destination", args.size)
    except ParameterError as exc:
        print(f"qatmig: error: {exc}", file=sys.stderr)
        return 2
    verdict = compare(src, dst)
    if args.json:
        print_json(verdict.to_json())
    else:
        for role, end in (("source", src), ("destination", dst)):
            print(f"{role:<12} {end.sha256 or '-'}  {end.text}")
        word = "verified" if verdict.verified else "NOT verified"
        print(f"{word}: {verdict.reason}")
    if not verdict.verified:
        print(f"qatmig: error: destination differs from the source: {verdict.reason}",
              file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify", help="compare a migration's two ends (images, --json reports or digests)",
        description="Check that a migration between two processes or hosts delivered the "
        "source's RAM byte for byte.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SRC", help="source image, send --json report or sha256")
    p.add_argument("destination", metavar="DST",
                   help="destination image, listen --json report or sha256")
    p.add_argument("--size", type=size_arg, default=None, metavar="SIZE",
                   help="compare only the first SIZE bytes of images (the guest size, when the "
                   "image file is larger)")
    add_json_flag(p)
    p.set_defaults(func=_cmd_verify)
