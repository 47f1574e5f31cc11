"""The suite's fault checks judge: QAT failures mid-run (conformance/test_fallback.py) and a
connection killed mid-run by the suite's tap (conformance/test_faults.py).

The engine runs as a third party's program (``exec:``, a copy of ``qatmig_engine`` built by
benchmarks/mutation_score.py, the suite started away from it): the pristine copy passes, and
each one-defect copy below fails the check written for its defect.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation_score",
                                               ROOT / "benchmarks" / "mutation_score.py")
assert _spec is not None and _spec.loader is not None
ms = sys.modules.get("mutation_score") or importlib.util.module_from_spec(_spec)
if "mutation_score" not in sys.modules:
    sys.modules["mutation_score"] = ms
    _spec.loader.exec_module(ms)

#: The suite's fault checks (-k selection).
FAULT_TESTS = "mid_run"
#: A small silesia guest: the fault checks use guest_odd_size (16 MiB + 4 KiB) themselves.
SUITE_ARGS = ("--qatmig-guest-size=4M", "--qatmig-devices=sw")

#: The fault mutants of benchmarks/mutation_score.py, the checks that must fail them and the
#: message each must fail with.
FAULT_MUTANTS = (
    # the wire judge (pages compared with the source's RAM) or the suite's digest
    ("fallback-loses-the-failing-packet", "loses_no_page",
     "differs from the source's final RAM|pages lost when the QAT backend failed mid-run"),
    ("fallback-silent", "loses_no_page", "fell back to software without saying so"),
    ("fallback-off-ignored-mid-run", "fallback_off",
     "the QAT backend failed mid-run, and the migration completed"),
    ("dest-lost-channel-completes", "killed_mid_run",
     "the destination reported completed although multifd connection"),
)
MUTANTS = [pytest.param(next(m for m in ms.MUTANTS if m.name == name), select, message, id=name)
           for name, select, message in FAULT_MUTANTS]


def _suite(prog: Path, select: str) -> tuple[int | None, list[str], str]:
    rc, failed, _secs, tail = ms.run_suite(prog, select=select, workers=1, stop_first=False,
                                           extra=SUITE_ARGS)
    return rc, failed, tail


def test_the_pristine_engine_as_a_program_passes_the_fault_checks(tmp_path: Path) -> None:
    rc, failed, tail = _suite(ms.build(None, tmp_path), FAULT_TESTS)
    assert rc == 0 and not failed, tail
    assert " passed" in tail and "skipped" not in tail, tail


@pytest.mark.parametrize(("mutant", "select", "message"), MUTANTS)
def test_a_fault_handled_wrong_fails_its_check(  # type: ignore[no-untyped-def]
        tmp_path: Path, mutant, select: str, message: str) -> None:
    rc, failed, tail = _suite(ms.build(mutant, tmp_path), select)
    assert rc == 1 and failed, tail
    assert all(select in name for name in failed), failed
    assert re.search(message, tail), tail
