"""``qatmig certify``: certify a QAT host (or a fleet) with a report and an exit status.

The command lives in :mod:`pytest_qatmig.certify` (it drives the conformance suite, a pytest
run); this module only registers it and imports it when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    from pytest_qatmig.certify.cli import EPILOG, add_arguments

    p = subparsers.add_parser(
        "certify",
        help="certify a QAT host (or a fleet) for qatzip migration: report + verdict",
        description="Check a host for QATzip live migration as QEMU's document describes it: "
        "host checks, the conformance suite spread over the QAT devices, and the profile's "
        "benchmark cases with thresholds. Writes report.json, report.md, junit.xml and plots.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pytest_qatmig.certify.cli import run

    return run(args)
