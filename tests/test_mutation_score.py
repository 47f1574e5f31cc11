"""The mutation-score harness (benchmarks/mutation_score.py): its mutants still apply to the
engine, each runs isolated from the suite's own engine, and the CI subset is killed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation_score",
                                               ROOT / "benchmarks" / "mutation_score.py")
assert _spec is not None and _spec.loader is not None
ms = importlib.util.module_from_spec(_spec)
sys.modules["mutation_score"] = ms
_spec.loader.exec_module(ms)


def test_at_least_30_mutants_across_wire_codecs_and_engine() -> None:
    names = [m.name for m in ms.MUTANTS]
    assert len(names) == len(set(names))
    assert len(names) >= 30
    assert {"wire", "codecs", "engine"} <= {m.area for m in ms.MUTANTS}


@pytest.mark.parametrize("mutant", ms.MUTANTS, ids=[m.name for m in ms.MUTANTS])
def test_every_patch_applies_exactly(tmp_path: Path, mutant) -> None:  # type: ignore[no-untyped-def]
    prog = ms.build(mutant, tmp_path)
    pkg = prog.parent / "qatmig_engine"
    for p in mutant.patches:
        assert p.new in (pkg / p.path).read_text()
    assert (pkg / "cli" / "__init__.py").is_file()


def test_a_patch_that_no_longer_applies_is_an_error(tmp_path: Path) -> None:
    bad = ms.Mutant("stale", "wire", "x", (ms.Patch("wire.py", "no such text anywhere", "y"),))
    with pytest.raises(ms.PatchError, match="expected 1 occurrence"):
        ms.build(bad, tmp_path)


def test_the_mutant_program_imports_its_own_copy(tmp_path: Path) -> None:
    prog = ms.build(ms.MUTANTS[0], tmp_path)
    assert ms.check_isolated(prog).startswith(str(prog.parent))


@pytest.mark.slow
def test_the_ci_subset_is_killed_and_the_pristine_copy_passes(tmp_path: Path) -> None:
    fast = [m for m in ms.MUTANTS if m.ci_select]
    assert len(fast) >= 2
    prog = ms.build(None, tmp_path)
    rc, failed, _, tail = ms.run_suite(prog, select=" or ".join(f"({m.ci_select})" for m in fast),
                                       workers=1, timeout=600)
    assert rc == 0, f"the pristine copy fails the suite: {failed}\n{tail}"
    for m in fast:
        o = ms.score(m, tmp_path, select=m.ci_select, workers=1, timeout=600)
        assert o.verdict == "killed", f"{m.name}: {o.verdict} {o.detail}"


def test_the_suite_never_imports_the_mutant(tmp_path: Path) -> None:
    prog = ms.build(ms.MUTANTS[0], tmp_path)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    ms.check_pristine(tmp_path, env)  # an unrelated directory: fine
    with pytest.raises(RuntimeError, match="would import"):
        ms.check_pristine(prog.parent, env)  # beside the mutant's package: refused
