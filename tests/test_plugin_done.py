"""Issue #7's acceptance check: in a fresh directory outside the repository, a three-line test
file using multifd_pair and silesia_guest_memory passes with `pytest -p qatmig` and with
`pytest -p qatmig -n 2` (subprocesses, default options apart from a small guest)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

THREE_LINES = """\
def test_migrates(multifd_pair, silesia_guest_memory):
    result = multifd_pair(channels=2, compression="zstd").migrate(silesia_guest_memory)
    assert result.verified and result.status == "completed"
"""


@pytest.mark.parametrize(
    ("xdist", "autoload"),
    [([], True), (["-n", "2"], True), ([], False)],
    ids=["serial", "xdist-n2", "autoload-off"],
)
def test_three_line_file_passes_in_a_fresh_directory(xdist: list[str], autoload: bool) -> None:
    if xdist:
        pytest.importorskip("xdist", reason="pip install pytest-xdist")
    with tempfile.TemporaryDirectory(prefix="qatmig-fresh-") as fresh:
        assert not Path(fresh).resolve().is_relative_to(REPO)
        (Path(fresh) / "test_fresh.py").write_text(THREE_LINES)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        if not autoload:
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "qatmig", *xdist, "--qatmig-guest-size=16M",
             "-p", "no:cacheprovider", "-q", "test_fresh.py"],
            cwd=fresh, env=env, capture_output=True, text=True, timeout=300,
        )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
