"""qatmig_requires and qatmig_perf (with host-profile precedence)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

LOOPBACK = "--qatmig-impl=pytest_qatmig.testing:loopback_copy"

REQUIRES = """
import pytest

@pytest.mark.qatmig_requires("none")
def test_has():
    pass

@pytest.mark.qatmig_requires("none", "zstd", "tls")
def test_lacks():
    pass

@pytest.mark.qatmig_requires("dialect:qemu-9.2")
def test_dialect():
    pass
"""


def test_requires_skips_what_the_implementation_lacks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(REQUIRES)
    result = pytester.runpytest(LOOPBACK, "--qatmig-devices=sw", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines([
        # reported at the user's test module, not inside the plugin
        "SKIPPED [[]1] test_requires_skips_what_the_implementation_lacks.py:*: UNIMPLEMENTED: "
        "implementation 'loopback-copy' lacks zstd, tls "
        "(has: dialect:qemu-9.2, none)"
    ])


def test_requires_against_the_reference_engine(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.qatmig_requires("zstd", "qatzip", "dialect:qemu-7.2")
        def test_has():
            pass

        @pytest.mark.qatmig_requires("tls")
        def test_tls():
            pass
    """)
    result = pytester.runpytest("--qatmig-devices=sw")
    result.assert_outcomes(passed=1, skipped=1)


PERF = """
import os
import pytest

@pytest.fixture
def guest(tmp_path):
    path = tmp_path / "guest.img"
    path.write_bytes(os.urandom(128 * 1024))
    return path

@pytest.mark.qatmig_perf(min_mbps=0.001, max_downtime_ms=600000)
def test_lenient(multifd_pair, guest):
    assert multifd_pair(channels=1).migrate(guest).verified

@pytest.mark.qatmig_perf(min_mbps=1e12)
def test_too_slow(multifd_pair, guest):
    multifd_pair(channels=1).migrate(guest)

@pytest.mark.qatmig_perf(max_send_cpu=-1)
def test_too_much_cpu(multifd_pair, guest):
    multifd_pair(channels=1).migrate(guest)

@pytest.mark.qatmig_perf(max_total_ms=0)
def test_too_long(multifd_pair, guest):
    multifd_pair(channels=1).migrate(guest)

def test_not_perf(multifd_pair, guest):
    multifd_pair(channels=1).migrate(guest)
"""


def test_perf_thresholds(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PERF)
    result = pytester.runpytest(LOOPBACK, "--qatmig-devices=sw")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines([
        "*= qatmig performance =*",
        "test*impl*method*ch*device*total ms*downtime ms*Mbps*pages/s*send %*recv %*check",
    ])
    out = result.stdout.str()
    assert "test_not_perf" not in out.split("qatmig performance")[1]  # only perf tests listed
    for message in (
        "*test_lenient*loopback-copy*none*1*sw*ok",
        "*test_too_slow*FAIL",
        "FAIL*test_too_slow: throughput_mbps * < min_mbps 1e+12 (limit from qatmig_perf marker)",
        "FAIL*test_too_much_cpu: send_cpu_percent * > max_send_cpu -1 (limit from qatmig_perf "
        "marker)",
        "FAIL*test_too_long: total_time_ms * > max_total_ms 0 (limit from qatmig_perf marker)",
    ):
        result.stdout.fnmatch_lines([message])


def test_perf_marker_rejects_unknown_keys(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.qatmig_perf(min_speed=3)
        def test_perf(multifd_pair, tmp_path):
            (tmp_path / "g").write_bytes(bytes(4096))
            multifd_pair().migrate(tmp_path / "g")
    """)
    result = pytester.runpytest(LOOPBACK, "--qatmig-devices=sw")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unknown threshold(s) min_speed*"])


PROFILE = """
name: precedence
perf:
  defaults: {min_mbps: 1.0e+12, max_send_cpu: -1}
  tests:
    "*test_overridden*": {min_mbps: 0.001}
"""


def test_profile_precedence(pytester: pytest.Pytester) -> None:
    """profile per-test override > marker kwargs > profile defaults."""
    (pytester.path / "host.yaml").write_text(PROFILE)
    pytester.makepyfile("""
        import os
        import pytest

        @pytest.fixture
        def guest(tmp_path):
            path = tmp_path / "guest.img"
            path.write_bytes(os.urandom(64 * 1024))
            return path

        @pytest.mark.qatmig_perf()
        def test_defaults_apply(multifd_pair, guest):
            multifd_pair().migrate(guest)

        @pytest.mark.qatmig_perf(min_mbps=0.001, max_send_cpu=100000)
        def test_marker_beats_defaults(multifd_pair, guest):
            multifd_pair().migrate(guest)

        @pytest.mark.qatmig_perf(min_mbps=1e15, max_send_cpu=100000)
        def test_overridden(multifd_pair, guest):
            multifd_pair().migrate(guest)
    """)
    result = pytester.runpytest(LOOPBACK, "--qatmig-devices=sw", "--qatmig-profile=host.yaml")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAIL*test_defaults_apply: throughput_mbps * < min_mbps 1e+12 "
                                 "(limit from profile precedence (host.yaml) perf.defaults)"])
