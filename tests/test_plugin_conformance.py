"""The conformance suite runs with `--pyargs qatmig_conformance` against the reference engine
and, when installed, a real QEMU (small guest so it stays quick)."""

from __future__ import annotations

import shutil

import pytest

# Inline pytester runs drop the modules they imported; numpy (used by the Silesia images)
# refuses to load twice in one process, so import it here, outside the nested runs.
import qatmig_engine.silesia.image  # noqa: F401
from qatmig_engine.qemu.fetch import find_qemu10

# Looked up at import: pytester points HOME (and so the default cache folder) elsewhere.
QEMU10 = find_qemu10()

pytest_plugins = ["pytester"]


def test_conformance_against_the_reference_engine(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(
        "-p", "qatmig", "--pyargs", "qatmig_conformance", "--qatmig-devices=sw",
        "--qatmig-guest-size=4M", "-rs",
    )
    outcomes = result.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors"), result.stdout.str()
    assert outcomes.get("passed", 0) >= 40  # incl. the white-box codec module
    result.stdout.fnmatch_lines(["*qat_hw: no ready QAT device*"])


@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None,
    reason="needs qemu-system-x86_64: apt-get install qemu-system-x86",
)
def test_conformance_against_real_qemu(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(
        "-p", "qatmig", "--pyargs", "qatmig_conformance", "--qatmig-devices=sw",
        "--qatmig-guest-size=4M", "--qatmig-impl=qemu", "-rs",
    )
    outcomes = result.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors"), result.stdout.str()
    assert outcomes.get("passed", 0) >= 10
    result.stdout.fnmatch_lines(["*UNIMPLEMENTED: implementation 'qemu' lacks qatzip*"])
    result.stdout.fnmatch_lines(["*UNIMPLEMENTED: implementation 'qemu' lacks codec-access*"])


@pytest.mark.skipif(
    QEMU10 is None,
    reason="QEMU 10.0 not fetched: run `python -m qatmig_engine.qemu.fetch` (or `make "
    "system-deps`)",
)
def test_conformance_against_real_qemu_10(pytester: pytest.Pytester) -> None:
    """``qemu:FOLDER`` takes the fetched QEMU 10.0 (its wrapper adds modules and firmware)."""
    q = QEMU10
    assert q is not None
    result = pytester.runpytest(
        "-p", "qatmig", "--pyargs", "qatmig_conformance", "--qatmig-devices=sw",
        "--qatmig-guest-size=4M", f"--qatmig-impl=qemu:{q.root}", "-rs",
    )
    outcomes = result.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors"), result.stdout.str()
    assert outcomes.get("passed", 0) >= 10
    result.stdout.fnmatch_lines(["qatmig: implementation qemu (*QEMU emulator version 10.0*"
                                 "qemu-10.0)*"])


def test_conformance_against_exec_qatmig(pytester: pytest.Pytester) -> None:
    """The engine's own CLI through the exec: contract passes the whole suite, in every
    direction against the reference peer (the suite imports nothing of the program)."""
    result = pytester.runpytest_subprocess(
        "-p", "qatmig", "--pyargs", "qatmig_conformance", "--qatmig-devices=sw",
        "--qatmig-guest-size=4M", "--qatmig-impl=exec:qatmig", "-rs", "-v",
    )
    outcomes = result.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors"), result.stdout.str()
    assert outcomes.get("passed", 0) >= 40
    result.stdout.fnmatch_lines([
        "*test_round_trip_per_method[[]zstd-impl-to-impl[]] PASSED*",
        "*test_round_trip_per_method[[]zstd-impl-to-peer[]] PASSED*",
        "*test_round_trip_per_method[[]zstd-peer-to-impl[]] PASSED*",
    ])
    # White-box checks need codec access, which a program does not give.
    result.stdout.fnmatch_lines(
        ["*UNIMPLEMENTED: implementation 'exec:qatmig' lacks codec-access*"])
