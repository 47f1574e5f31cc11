"""Devices: discovery on fake sysfs trees, lock-file leases, qat_device and the qat_hw marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_qatmig import devices as dev
from pytest_qatmig.testing import make_sysfs_tree

pytest_plugins = ["pytester"]

FIXTURES_SYSFS = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"


def test_discovery_on_shipped_trees() -> None:
    ready = dev.ready_bdfs(dev.discover(FIXTURES_SYSFS / "4xxx_pf_dc" / "sys"))
    assert ready == ["0000:6b:00.0", "0000:70:00.0"]
    assert dev.discover(FIXTURES_SYSFS / "no_device" / "sys") == []
    (down,) = dev.discover(FIXTURES_SYSFS / "4xxx_down" / "sys")
    assert not down.ready and "down" in down.reason


def test_explicit_list_reads_each_address(tmp_path: Path) -> None:
    root = make_sysfs_tree(tmp_path, ready=1, down=1)
    a, b, c = dev.resolve_devices("0000:6b:00.0,0000:6c:00.0,0000:99:00.0", root)
    assert a.hw_ready
    assert not b.ready and "down" in b.reason
    assert not c.ready and "no QAT device 0000:99:00.0" in c.reason
    assert dev.resolve_devices("sw", root) == []


def test_leases_come_from_a_free_list_of_lock_files(tmp_path: Path) -> None:
    devices = dev.discover(make_sysfs_tree(tmp_path / "t", ready=2))
    lock_dir = tmp_path / "locks"
    first = dev.acquire_device(devices, lock_dir)
    second = dev.acquire_device(devices, lock_dir, prefer=first.device.bdf)
    assert first is not None and second is not None
    assert first.device.bdf != second.device.bdf  # the preferred one was taken: next free
    assert dev.acquire_device(devices, lock_dir) is None
    first.release()
    again = dev.acquire_device(devices, lock_dir)
    assert again is not None and again.device.bdf == first.device.bdf
    again.release()
    second.release()
    assert not lock_dir.exists(), "lock files are removed when released"


def test_a_dead_owner_frees_its_device(tmp_path: Path) -> None:
    """A crashed (restarted) worker's device is free again: the kernel drops its flock."""
    root = make_sysfs_tree(tmp_path / "t", ready=1)
    lock_dir = tmp_path / "locks"
    code = (
        "import sys, pathlib; from pytest_qatmig import devices as d; "
        f"lease = d.acquire_device(d.discover({str(root)!r}), pathlib.Path({str(lock_dir)!r})); "
        "print(lease.device.bdf); sys.stdout.flush(); import os; os._exit(3)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stdout.strip() == "0000:6b:00.0"
    lease = dev.acquire_device(dev.discover(root), lock_dir)
    assert lease is not None
    lease.release()


def test_perf_lock_times_out_instead_of_hanging(tmp_path: Path) -> None:
    with dev.perf_lock(tmp_path, "sw", timeout=5) as waited:
        assert waited < 5
        with pytest.raises(TimeoutError, match="waited 0 s"), dev.perf_lock(tmp_path, "sw", 0.1):
            pass


def test_lock_dir_is_per_sysfs_tree(tmp_path: Path) -> None:
    assert dev.default_lock_dir(tmp_path / "a") != dev.default_lock_dir(tmp_path / "b")
    assert dev.default_lock_dir("/sys").name == "qatmig-devices"


QAT_DEVICE_TEST = """
import pytest

def test_device(qat_device):
    assert (qat_device.bdf, qat_device.backend, qat_device.ready) == {expected!r}

@pytest.mark.qat_hw
def test_needs_hardware(qat_device):
    assert qat_device.hw_ready
"""


def test_qat_device_owns_a_ready_device(pytester: pytest.Pytester) -> None:
    root = make_sysfs_tree(pytester.path / "host", ready=2, down=1)
    pytester.makepyfile(QAT_DEVICE_TEST.format(expected=("0000:6b:00.0", "hw", True)))
    result = pytester.runpytest(f"--qatmig-sysfs-root={root}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["qatmig: *devices auto: 2 of 3 ready (0000:6b:00.0, 0000:6c:00.0)*"]
    )


@pytest.mark.parametrize(
    ("ready", "down", "args", "reason"),
    [
        (0, 0, [], "*no QAT device under*"),
        (0, 1, [], "*no ready QAT device (0000:6b:00.0: device is down*"),
        (2, 0, ["--qatmig-devices=sw"], "*--qatmig-devices=sw*"),
    ],
)
def test_qat_hw_skips_with_reason_and_how_to_enable(
    pytester: pytest.Pytester, ready: int, down: int, args: list[str], reason: str
) -> None:
    root = make_sysfs_tree(pytester.path / "host", ready=ready, down=down)
    pytester.makepyfile(QAT_DEVICE_TEST.format(expected=("sw", "sw", True)))
    result = pytester.runpytest(f"--qatmig-sysfs-root={root}", "-rs", *args)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED*qat_hw: no ready QAT device for this worker {reason}"])
    result.stdout.fnmatch_lines(["*Enable: a QAT device with 'dc' in cfg_services*"])


def test_devices_list_option_picks_the_listed_device(pytester: pytest.Pytester) -> None:
    root = make_sysfs_tree(pytester.path / "host", ready=3)
    pytester.makepyfile(QAT_DEVICE_TEST.format(expected=("0000:6d:00.0", "hw", True)))
    result = pytester.runpytest(f"--qatmig-sysfs-root={root}", "--qatmig-devices=0000:6d:00.0")
    result.assert_outcomes(passed=2)


def test_two_runs_never_share_a_device(pytester: pytest.Pytester) -> None:
    """A device held by another process (a concurrent run) is not handed out again."""
    root = make_sysfs_tree(pytester.path / "host", ready=1)
    lease = dev.acquire_device(dev.discover(root), dev.default_lock_dir(root))
    assert lease is not None
    try:
        pytester.makepyfile(QAT_DEVICE_TEST.format(expected=("sw", "sw", True)))
        result = pytester.runpytest(f"--qatmig-sysfs-root={root}", "-rs")
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*owned by other workers or runs*"])
    finally:
        lease.release()
