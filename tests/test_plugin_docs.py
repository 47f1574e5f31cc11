"""The examples in docs/plugin.md are executed: every ```python block is a test module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(pytester: pytest.Pytester, index: int) -> None:
    pytester.makepyfile(**{f"test_doc_example_{index}": BLOCKS[index]})
    result = pytester.runpytest("-p", "qatmig", "--qatmig-devices=sw", "--qatmig-guest-size=4M",
                                "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1, result.stdout.str()
    assert not outcomes.get("failed") and not outcomes.get("errors"), result.stdout.str()


def test_option_table_lists_every_option() -> None:
    from pytest_qatmig.state import OPTIONS

    text = DOC.read_text()
    for name in OPTIONS:
        assert f"`--qatmig-{name.replace('_', '-')}" in text
        assert f"`qatmig_{name}`" in text
    for fixture in ("qatmig_impl", "qat_device", "silesia_guest_memory", "multifd_pair"):
        assert f"| `{fixture}` | " in text
    for marker in ("qat_hw", "qatmig_requires", "qatmig_perf"):
        assert f"| `{marker}" in text
