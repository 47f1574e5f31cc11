"""xdist: one device per worker from the lock-file free list, -n auto, worker restarts, the
per-device performance lock, and the perf summary aggregated on the controller."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

from pytest_qatmig.devices import default_lock_dir
from pytest_qatmig.testing import make_sysfs_tree

pytest_plugins = ["pytester"]
#: Every nested process would otherwise import (and assertion-rewrite) all of hypothesis for
#: its terminal summary: seconds of CPU per worker on this machine, and irrelevant here.
LEAN = ("-p", "no:hypothesispytest")
FIXTURES_SYSFS = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"
pytest.importorskip("xdist", reason="pip install pytest-xdist to test the xdist integration")

RECORD = """
import json, os, time
import pytest

OUT = {out!r}

def record(qat_device, name):
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump({{"worker": os.environ.get("PYTEST_XDIST_WORKER"), "device": qat_device.bdf,
                   "backend": qat_device.backend}}, f)

@pytest.mark.parametrize("i", range({n}))
def test_record(qat_device, i):
    record(qat_device, f"t{{i}}")
    time.sleep({sleep})  # let every worker get some of the tests
"""


def _records(out: Path) -> list[dict[str, str]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


GUEST = """

@pytest.mark.parametrize("j", range(6))
def test_guest(silesia_guest_memory, j):
    st = os.stat(silesia_guest_memory)
    assert silesia_guest_memory.size == st.st_size == 4 << 20
    with open(os.path.join(OUT, f"guest{j}.img-record"), "w") as f:
        json.dump({"worker": os.environ.get("PYTEST_XDIST_WORKER"), "inode": st.st_ino,
                   "mtime": st.st_mtime_ns, "corpus": silesia_guest_memory.corpus}, f)
"""


def test_n_auto_one_worker_per_ready_device_each_owning_its_own(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-n auto = one worker per ready device; each owns its own; and silesia_guest_memory is
    built once for the run (the other workers wait on the lock in the shared basetemp)."""
    # 3 ready devices on a 2-CPU machine: 3 workers means the count came from the devices.
    root = make_sysfs_tree(pytester.path / "host", ready=3, down=2)
    out = pytester.mkdir("out")
    cache = pytester.mkdir("cache")
    monkeypatch.setenv("QATMIG_CACHE_DIR", str(cache))
    pytester.makepyfile(RECORD.format(out=str(out), n=9, sleep=0.2) + GUEST)
    result = pytester.runpytest_subprocess(
        *LEAN, "-n", "auto", f"--qatmig-sysfs-root={root}", "--qatmig-guest-size=4M"
    )
    result.assert_outcomes(passed=15)
    result.stdout.fnmatch_lines(["*3 workers [[]15 items[]]*"])
    by_worker: dict[str, set[str]] = {}
    for rec in _records(out):
        assert rec["backend"] == "hw"
        by_worker.setdefault(rec["worker"], set()).add(rec["device"])
    assert all(len(devs) == 1 for devs in by_worker.values()), by_worker
    owned = [next(iter(d)) for d in by_worker.values()]
    assert len(owned) == len(set(owned)), f"two workers shared a device: {by_worker}"
    assert set(owned) <= {"0000:6b:00.0", "0000:6c:00.0", "0000:6d:00.0"}
    guests = [json.loads(p.read_text()) for p in out.glob("*.img-record")]
    assert len(guests) == 6 and len({g["worker"] for g in guests}) >= 2, guests
    assert len({(g["inode"], g["mtime"]) for g in guests}) == 1, "image built more than once"
    assert {g["corpus"] for g in guests} == {"stand-in (silesia-standin v1)"}
    assert sorted(p.suffix for p in (cache / "images").iterdir()) == [".img", ".json"]
    assert not default_lock_dir(root).exists(), "workers left their device lock files"


def test_restarted_worker_gets_a_device(pytester: pytest.Pytester) -> None:
    """A crashed worker comes back with a *new* gw id and still gets a hardware device.

    Runs on a copy of the shipped fake host ``4xxx_vfs_vfio`` (a PF and a VF ready on vfio,
    the rest not ready); a copy, so that concurrent runs do not contend for its lock files.
    """
    shutil.copytree(FIXTURES_SYSFS / "4xxx_vfs_vfio", pytester.path / "host")
    root = pytester.path / "host" / "sys"
    out = pytester.mkdir("out")
    crash_first = f"""
import os

def test_crash_once():
    flag = os.path.join({str(out)!r}, "crashed")
    if not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(1)
"""
    # The crash comes first; the surviving worker then holds each of its tests until the
    # replacement has run one (bounded), so the replacement gets tests however slowly it starts
    # on a loaded machine, instead of by the luck of a sleep.
    wait_for_replacement = f"""

@pytest.fixture(autouse=True)
def _hold_until_a_replacement_ran(request):
    flag = os.path.join({str(out)!r}, "replacement-ran")
    if request.node.name == "test_crash_once":
        return
    if os.environ.get("PYTEST_XDIST_WORKER") not in ("gw0", "gw1"):
        open(flag, "w").close()
        return
    deadline = time.monotonic() + 120
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)
"""
    pytester.makepyfile(crash_first + RECORD.format(out=str(out), n=8, sleep=0)
                        + wait_for_replacement)

    result = pytester.runpytest_subprocess(
        *LEAN, "-n", "2", "--max-worker-restart=2", f"--qatmig-sysfs-root={root}"
    )
    result.stdout.fnmatch_lines(["*replacing crashed worker*"])
    records = _records(out)
    workers = {r["worker"] for r in records}
    assert len(records) == 8
    assert all(r["backend"] == "hw" for r in records), records
    # Any worker that started after the crash (gw2...) owns a real device too.
    assert {r["device"] for r in records} <= {"0000:6b:00.0", "0000:6b:00.1"}
    assert workers - {"gw0", "gw1"}, f"no replacement worker ran a test: {workers}"


PERF = """
import os, time
import pytest

OUT = {out!r}

@pytest.mark.qatmig_perf(min_mbps=0.001)
@pytest.mark.parametrize("i", range(4))
def test_perf(multifd_pair, i, tmp_path):
    guest = tmp_path / "guest.img"
    guest.write_bytes(os.urandom(256 * 1024))
    start = time.time()
    result = multifd_pair(channels=1).migrate(guest)
    assert result.verified
    time.sleep(0.3)
    with open(os.path.join(OUT, f"{{i}}.txt"), "w") as f:
        f.write(f"{{start}} {{time.time()}}")
"""


def test_perf_tests_never_share_a_device_and_summary_is_aggregated(
    pytester: pytest.Pytester,
) -> None:
    # No hardware: both workers run on the software device, whose perf lock keeps their
    # performance tests apart (the CPUs are the shared resource then).
    out = pytester.mkdir("out")
    root = make_sysfs_tree(pytester.path / "host", ready=0)
    pytester.makepyfile(PERF.format(out=str(out)))
    result = pytester.runpytest_subprocess(
        *LEAN, "-n", "2", "--qatmig-impl=pytest_qatmig.testing:loopback_copy",
        f"--qatmig-sysfs-root={root}",
    )
    result.assert_outcomes(passed=4)
    spans = sorted(tuple(map(float, p.read_text().split())) for p in out.glob("*.txt"))
    assert len(spans) == 4
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two perf tests ran at the same time on the sw device: {spans}"
    result.stdout.fnmatch_lines([
        "*= qatmig performance =*",
        "test*impl*method*ch*device*total ms*downtime ms*Mbps*pages/s*send %*recv %*check",
    ])
    rows = [line for line in result.outlines if "test_perf[" in line and " ok" in line]
    assert len(rows) == 4, result.outlines

