"""``qatmig`` command line: one module per subcommand, each exporting ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
import threading

from ..errors import QatmigError, WireError

#: Subcommand modules in help order. Each defines ``register(subparsers)``, which adds its
#: parser(s) and sets ``func(args) -> int`` as the parser default.
SUBCOMMAND_MODULES = (
    "migrate", "verify", "contract", "qzip", "guest", "devices", "tap", "bench", "certify",
    "tlscerts",
)

EPILOG = """\
examples:
  qatmig migrate --guest-size 256M --multifd-compression zstd
  qatmig migrate --multifd-compression qatzip --qat-backend auto --json
  qatmig listen --listen 127.0.0.1:4444 --guest-image dst.img --guest-size 1G
  qatmig send 127.0.0.1:4444 --guest-image src.img
  qatmig verify src.img dst.img    # did listen/send deliver the source's RAM? (or --json reports)
  qatmig tls-certs creds           # test x509 credentials for --tls-creds creds (QEMU's layout)
  qatmig guest build --size 1G --corpus stand-in -o guest.img
  qatmig devices --json
  qatmig qzip -L 1 file            # QATzip gzip-ext, like QATzip's own qzip tool
  qatmig bench --channels 2,4,8    # the seed table: engine vs real QEMU, CSV/JSON/plots
  qatmig certify --profile fixtures/hosts/software-only.yaml -o out/   # certify this host

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


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the main thread so ``finally`` blocks remove partial files."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _stdout_gone() -> None:
    """The reader of stdout went away (``| head``): drop what is still buffered quietly.

    Python would otherwise report a second BrokenPipeError while flushing stdout at exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qatmig`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(func(args) or 0)
    except QatmigError as exc:
        where = exc.where() if isinstance(exc, WireError) else ""
        print(f"qatmig: error: {exc}" + (f" [{where}]" if where else ""), file=sys.stderr)
        return 1
    except BrokenPipeError:
        _stdout_gone()
        return 141  # what a shell reports for a writer killed by SIGPIPE
    except KeyboardInterrupt:
        print("qatmig: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("qatmig: terminated (SIGTERM); partial files removed", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
