"""``qatmig capabilities`` and ``qatmig check``: the two commands of the conformance suite's
``exec:`` contract beside ``listen`` and ``send`` (docs/conformance.md, "exec: contract")."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import print_json

#: Version of the exec: command-line contract this program speaks.
CONTRACT_VERSION = 1


def engine_capabilities() -> list[str]:
    """What this engine can do, in the suite's capability words (methods, dialects, features)."""
    from ..codecs import get_codec
    from ..dialects import DIALECTS

    # qat-fault-injection: `send --qat-inject-fault SPEC` makes the qatzip backend fail
    # mid-run; ramblocks: `send/listen --add-ramblock NAME=FILE` carry further RAM blocks
    # (docs/conformance.md, the exec: contract)
    caps = {"max-bandwidth", "verify", "zero-page-detection", "dirty-rate",
            "qat-fault-injection", "ramblocks"}
    for method in ("none", "zlib", "zstd", "qatzip", "qpl", "uadk"):
        try:
            get_codec(method)
        except Exception:  # a codec module not importable here is simply not a capability
            continue
        caps.add(method)
    caps.update(f"dialect:{d}" for d in DIALECTS)
    return sorted(caps)


def _cmd_capabilities(args: argparse.Namespace) -> int:
    from .. import __version__

    info: dict[str, Any] = {
        "name": "qatmig",
        "version": __version__,
        "contract": CONTRACT_VERSION,
        "capabilities": engine_capabilities(),
    }
    if args.json:
        print_json(info)
    else:
        print(f"qatmig {__version__} (exec contract {CONTRACT_VERSION})")
        for cap in info["capabilities"]:
            print(f"  {cap}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .migrate import _params

    _params(args).validate()  # ParameterError -> "qatmig: error: <QEMU's text>", exit 1
    if not args.quiet:
        print("parameters accepted")
    return 0


def register(subparsers: Any) -> None:
    from ._common import add_json_flag
    from .migrate import _add_params

    p = subparsers.add_parser(
        "capabilities", help="what this engine can do (methods, dialects, features)",
        description="Print the capabilities the conformance suite's exec: contract asks for: "
        "compression methods, dialect:<name> for each wire dialect, and features.")
    add_json_flag(p)
    p.set_defaults(func=_cmd_capabilities)

    p = subparsers.add_parser(
        "check", help="validate migration parameters without starting anything",
        description="Exit 0 when the migration parameters are acceptable; otherwise exit "
        "non-zero with QEMU's error text on stderr (as migrate-set-parameters would).")
    _add_params(p)
    p.set_defaults(func=_cmd_check)
