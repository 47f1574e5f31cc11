"""The examples in docs/plugin.md are executed: every ```python block is a test module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Inline pytester runs drop the modules they imported; numpy (used by the Silesia images)
# refuses to load twice in one process, so import it here, outside the nested runs.
import qatmig_engine.silesia.image  # noqa: F401

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples() -> None:
    assert len(BLOCKS) >= 4


def test_doc_examples_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(**{f"test_doc_example_{i}": block for i, block in enumerate(BLOCKS)})
    result = pytester.runpytest("-p", "qatmig", "--qatmig-devices=sw", "--qatmig-guest-size=4M",
                                "-v", "-rs")
    outcomes = result.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors"), result.stdout.str()
    for i in range(len(BLOCKS)):  # every example ran something (skips need a reason)
        result.stdout.fnmatch_lines([f"test_doc_example_{i}.py::* PASSED*"])


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
