"""Report header and the performance summary table."""

from __future__ import annotations

import pytest

# Inline pytester runs drop the modules they imported; numpy (imported when a corpus option is
# checked) refuses to load twice in one process, so import it here, outside the nested runs.
import qatmig_engine.silesia.image  # noqa: F401

from pytest_qatmig.results import MigrationResult, check_thresholds, perf_table
from pytest_qatmig.testing import make_sysfs_tree

pytest_plugins = ["pytester"]


def test_header_names_implementation_devices_and_corpus(pytester: pytest.Pytester) -> None:
    root = make_sysfs_tree(pytester.path / "host", ready=1, down=1)
    pytester.makepyfile("def test_x(): pass")
    corpus = pytester.path / "corp"
    corpus.mkdir()
    (corpus / "text").write_bytes(b"corpus " * 1000)
    result = pytester.runpytest(f"--qatmig-sysfs-root={root}", f"--qatmig-corpus={corpus}",
                                "--qatmig-guest-size=16M")
    result.stdout.fnmatch_lines([
        "qatmig: implementation reference (*) | devices auto: 1 of 2 ready (0000:6b:00.0)"
        f" [[]sysfs {root}[]] | corpus {corpus}, guest 16M",
    ])


def test_header_with_software_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--qatmig-devices=sw",
                                "--qatmig-impl=pytest_qatmig.testing:loopback_copy")
    result.stdout.fnmatch_lines([
        "qatmig: implementation loopback-copy (pytest_qatmig.testing) | devices sw (software"
        " path only) | corpus stand-in, guest 64M",
    ])


def test_profile_line_reports_missing_devices(pytester: pytest.Pytester) -> None:
    root = make_sysfs_tree(pytester.path / "host", ready=1)
    (pytester.path / "p.yaml").write_text(
        "name: lab\ndevices:\n  expected: ['0000:6b:00.0', '0000:99:00.0']\n  min_ready: 2\n"
    )
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(f"--qatmig-sysfs-root={root}", "--qatmig-profile=p.yaml")
    result.stdout.fnmatch_lines([
        "qatmig: host profile lab (p.yaml): expected device(s) not ready: 0000:99:00.0; "
        "1 ready device(s), profile wants at least 2",
    ])


def test_no_summary_without_perf_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert "qatmig performance" not in result.stdout.str()


FIELDS = {
    "status": "completed", "total_time_ms": 1234.5, "downtime_ms": 12.25,
    "throughput_mbps": 10500.0, "pages_per_second": 320000, "transferred_bytes": 1,
    "normal_pages": 1, "zero_pages": 0, "send_cpu_percent": 160.0, "recv_cpu_percent": 75.5,
    "verified": True, "multifd_compression": "qatzip", "multifd_channels": 8,
}


def test_perf_table_has_the_seed_columns() -> None:
    record = {"nodeid": "t.py::test_a", "impl": "reference", "device": "0000:6b:00.0",
              "result": FIELDS, "failures": []}
    lines = perf_table([record]).splitlines()
    assert lines[0].split() == [
        "test", "impl", "method", "ch", "device", "total", "ms", "downtime", "ms", "Mbps",
        "pages/s", "send", "%", "recv", "%", "check",
    ]
    assert lines[2].split() == [
        "t.py::test_a", "reference", "qatzip", "8", "0000:6b:00.0", "1,234", "12",
        "10,500", "320,000", "160%", "76%", "ok",
    ]


def test_perf_table_prints_a_value_alike_whatever_its_type() -> None:
    """QEMU reports pages/s as a float, the engine as an int: the table must not show it."""
    as_int = dict(FIELDS, pages_per_second=73819, total_time_ms=1234, send_cpu_percent=160)
    as_float = dict(FIELDS, pages_per_second=73819.0, total_time_ms=1234.0,
                    send_cpu_percent=160.0)
    rows = [perf_table([{"nodeid": "t", "result": r}]).splitlines()[2] for r in (as_int, as_float)]
    assert rows[0] == rows[1] and "73,819 " in rows[0]
    missing = dict(FIELDS, downtime_ms=None)
    assert perf_table([{"nodeid": "t", "result": missing}]).splitlines()[2].split()[6] == "-"


def test_result_attribute_access_and_threshold_checks() -> None:
    r = MigrationResult(FIELDS)
    assert r.verified is True and r.throughput_mbps == 10500.0 and r["downtime_ms"] == 12.25
    assert check_thresholds(r, {"min_mbps": 10000, "max_send_cpu": 200}).ok
    verdict = check_thresholds(r, {"max_downtime_ms": 10, "max_recv_cpu": 50})
    assert verdict.failures == (
        "downtime_ms 12.2 > max_downtime_ms 10", "recv_cpu_percent 75.5 > max_recv_cpu 50",
    )
    with pytest.raises(ValueError, match="lacks the field"):
        MigrationResult({"status": "completed"})
