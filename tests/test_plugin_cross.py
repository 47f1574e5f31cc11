"""The cross matrix in the plugin: --qatmig-peer, the qatmig_cross marker and its test ids,
implementations without roles, and the full matrix behind --qatmig-matrix full."""

from __future__ import annotations

import shutil

import pytest

pytest_plugins = ["pytester"]

CROSS_TEST = """
import shutil

import pytest

@pytest.mark.qatmig_cross
@pytest.mark.parametrize("method", ["none"])
def test_cross(multifd_pair, qatmig_direction, tmp_path, method):
    guest = tmp_path / "guest.img"
    guest.write_bytes(bytes(range(256)) * 16 * 32)
    result = multifd_pair(channels=2, compression=method).migrate(guest, timeout=30)
    assert result.status == "completed" and result.verified is True
    assert result.get("direction", "impl-to-impl") == qatmig_direction

@pytest.mark.qatmig_full_matrix
def test_only_in_the_full_matrix():
    pass
"""


def test_peer_equal_to_the_implementation_runs_impl_to_impl_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CROSS_TEST)
    result = pytester.runpytest("--qatmig-devices=sw", "-v")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*test_cross[[]none-impl-to-impl[]] PASSED*"])


def test_a_pair_only_implementation_skips_the_cross_directions(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CROSS_TEST)
    result = pytester.runpytest("--qatmig-devices=sw", "-v", "-rs",
                                "--qatmig-impl=pytest_qatmig.testing:loopback_copy")
    result.assert_outcomes(passed=1, skipped=2, deselected=1)
    result.stdout.fnmatch_lines([
        "*test_cross[[]none-impl-to-impl[]] PASSED*",
        "*UNIMPLEMENTED: impl-to-peer needs the destination/source roles on both ends*",
    ])


def test_full_matrix_option_collects_its_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CROSS_TEST)
    result = pytester.runpytest("--qatmig-devices=sw", "--qatmig-matrix=full")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(("option", "message"), [
    ("--qatmig-peer=nope", "--qatmig-peer=nope: no implementation of that name"),
    ("--qatmig-matrix=most", "--qatmig-matrix: 'most' is not 'default' or 'full'"),
])
def test_bad_cross_options_are_usage_errors(pytester: pytest.Pytester, option: str,
                                            message: str) -> None:
    pytester.makepyfile(CROSS_TEST)
    result = pytester.runpytest("--qatmig-devices=sw", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="needs qemu-system-x86_64: apt-get install qemu-system-x86")
def test_a_guest_size_qemu_cannot_run_skips_in_its_directions(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.qatmig_cross
        def test_odd_size(multifd_pair, tmp_path):
            guest = tmp_path / "guest.img"
            guest.write_bytes(bytes(range(256)) * 16 * 257)  # 1 MiB + 4 KiB
            result = multifd_pair(channels=2).migrate(guest, timeout=60)
            assert result.verified
    """)
    result = pytester.runpytest("--qatmig-devices=sw", "--qatmig-peer=qemu", "-v", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*UNIMPLEMENTED: qemu runs guests of whole MiB (-m)*"])


def test_perf_tests_run_direct_and_the_others_are_judged(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.fixture
        def guest(tmp_path):
            path = tmp_path / "guest.img"
            path.write_bytes(bytes(range(256)) * 16 * 64)
            return path

        @pytest.mark.qatmig_perf(max_total_ms=600000)
        def test_perf(multifd_pair, guest):
            r = multifd_pair(channels=2).migrate(guest, timeout=30)
            assert r.verified and r.wire is None  # no proxy in the measured path

        def test_conformance(multifd_pair, guest):
            r = multifd_pair(channels=2).migrate(guest, timeout=30)
            assert r.verified and r.wire["totals"]["multifd_channels"] == 2
    """)
    result = pytester.runpytest("--qatmig-devices=sw")
    result.assert_outcomes(passed=2)
