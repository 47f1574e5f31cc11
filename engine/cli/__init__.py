"""``qatmig`` command line: one module per subcommand, each exporting ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ..errors import QatmigError, WireError

#: Subcommand modules in help order. Each defines ``register(subparsers)``, which adds its
#: parser(s) and sets ``func(args) -> int`` as the parser default.
SUBCOMMAND_MODULES = ("migrate", "qzip", "guest", "devices", "tap", "certify")

EPILOG = """\
examples:
  qatmig migrate --guest-size 256M --multifd-compression zstd
  qatmig migrate --multifd-compression qatzip --qat-backend auto --json
  qatmig listen --listen 127.0.0.1:4444 --guest-image dst.img --guest-size 1G
  qatmig send 127.0.0.1:4444 --guest-image src.img
  qatmig guest build --size 1G --corpus stand-in -o guest.img
  qatmig devices --json
  qatmig qzip -L 1 file            # QATzip gzip-ext, like QATzip's own qzip tool

Every reporting command takes --json. Parameter names are QEMU's (migrate-set-parameters).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qatmig",
        description="Reference QEMU multifd live-migration engine (none, zlib, zstd, qatzip, "
        "qpl, uadk) with QAT hardware discovery and a validating tap.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        modname = f"{__name__}.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qatmig`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except QatmigError as exc:
        where = exc.where() if isinstance(exc, WireError) else ""
        print(f"qatmig: error: {exc}" + (f" [{where}]" if where else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qatmig: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
