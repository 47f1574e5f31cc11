"""Loading the plugin: -p qatmig with autoload on/off, -p no:qatmig, nothing heavy at import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

USES_FIXTURE = """
def test_device(qat_device):
    assert qat_device.bdf
"""

HEAVY = ("qatmig_engine", "cffi", "zstandard", "yaml", "numpy", "isal", "tqdm")


def test_plugin_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, json; import pytest_qatmig.plugin; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_p_qatmig_loads_with_autoload_disabled(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(USES_FIXTURE)
    result = pytester.runpytest_subprocess("-p", "qatmig", "--qatmig-devices=sw")
    result.assert_outcomes(passed=1)
    # ... and without -p qatmig nothing provides the fixture.
    result = pytester.runpytest_subprocess("--qatmig-devices=sw")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*unrecognized arguments: --qatmig-devices=sw*"])


def test_p_qatmig_with_autoload_on_and_p_no_disables(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_FIXTURE)
    pytester.runpytest("-p", "qatmig", "--qatmig-devices=sw").assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:qatmig")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'qat_device' not found*"])


def test_markers_are_registered_and_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "qatmig", "--markers")
    result.stdout.fnmatch_lines([
        "@pytest.mark.qat_hw:*",
        "@pytest.mark.qatmig_perf(min_mbps=None, max_send_cpu=None, max_recv_cpu=None,*",
        "@pytest.mark.qatmig_requires(*capabilities):*",
    ])
    # --strict-markers accepts them.
    pytester.makepyfile("""
        import pytest
        @pytest.mark.qat_hw
        @pytest.mark.qatmig_requires("none")
        @pytest.mark.qatmig_perf(min_mbps=0)
        def test_x():
            pass
    """)
    result = pytester.runpytest("--strict-markers", "--collect-only", "-q")
    assert result.ret == 0


def test_help_lists_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    for name in ("impl", "devices", "profile", "guest-size", "corpus", "sysfs-root"):
        result.stdout.fnmatch_lines([f"*--qatmig-{name}=*"])
        result.stdout.fnmatch_lines([f"*qatmig_{name.replace('-', '_')} (string)*"])


def test_optional_xdist_hooks_without_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_FIXTURE)
    pytester.runpytest("-p", "no:xdist", "--qatmig-devices=sw").assert_outcomes(passed=1)


def test_public_api_names() -> None:
    import pytest_qatmig

    for name in pytest_qatmig.__all__:
        assert getattr(pytest_qatmig, name) is not None
    with pytest.raises(AttributeError, match=r"module 'pytest_qatmig' has no attribute 'nothing"):
        pytest_qatmig.nothing  # noqa: B018
